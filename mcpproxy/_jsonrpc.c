/* What the proxy reads of a JSON-RPC body without building it: mcpproxy/jsonrpc.py's Body.
 *
 * method_label(raw: bytes) -> str | None
 *     What Body.method says of raw after json.loads (with the relay's loader) — the method of a
 *     single message, "response" for a message without one, "-" for a body that is not JSON —
 *     or None when only the full parse can tell: a body that does not start with "{" (a batch,
 *     leading white space, another encoding), an escaped "method" key or value, nesting deeper
 *     than 64, an integer of more than 640 digits (Python's limit on converting one is
 *     configurable). Every byte is checked as json.loads checks it: the grammar (with NaN,
 *     Infinity and -Infinity), no control character in a string, UTF-8 as decoded with
 *     "surrogatepass", only JSON white space after the value.
 *
 * keys_unique(raw: bytes) -> bool
 *     True when raw is one JSON value json.loads takes, starting with "{" or "[", in which no
 *     object repeats a key; False when it is not, or when only the full parse can tell: an
 *     escaped key, an object of more than 32 keys, and the cases above. A route under a tool
 *     policy refuses repeated keys (policy.parse_strict): with True it parses without the
 *     checking hook, which is called for every object and took most of the parse.
 *
 * message_head(raw: bytes) -> tuple | None
 *     For a single message that keys_unique clears, what jsonrpc.head_of reads of json.loads's
 *     dict: (method, whether "id" is there, id, params.name, params.uri), a member of another
 *     type None; None when raw is anything else or only the full parse can tell (an escaped
 *     string among those five, an id with a fraction or exponent or of more than 18 digits).
 *     A route under a tool policy decides on these and nothing else of the body: with them it
 *     need not build the message (half its cost a request) unless something reads it later.
 *
 * Every relayed POST needs its method for the access line and the metrics, and json.loads built
 * the whole message for it: the dicts, every key and value. mcpproxy/_jsonrpc.py is what runs
 * without a C compiler (None: always the full parse); tests/test_units.py checks this module
 * against json.loads on generated bodies.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_DEPTH 64
#define MAX_INT_DIGITS 640

enum { BAD = -1, UNSURE = -2 };

typedef struct {
    const unsigned char *p, *end;
    int depth;
    int unique_keys; /* keys_unique(): an object's repeated key, or an escaped one, is UNSURE */
} Scan;

/* The keys of one object so far (keys_unique), compared as bytes: unescaped UTF-8 spells one
 * str one way only. */
#define MAX_KEYS 32
typedef struct {
    int count;
    const unsigned char *start[MAX_KEYS], *stop[MAX_KEYS];
} Keys;

/* UNSURE when s[0:n] is one of keys (or keys are full), else 0 after adding it. */
static int new_key(Keys *keys, const unsigned char *start, const unsigned char *stop) {
    if (keys->count == MAX_KEYS) return UNSURE;
    for (int i = 0; i < keys->count; i++)
        if (keys->stop[i] - keys->start[i] == stop - start && memcmp(keys->start[i], start, (size_t)(stop - start)) == 0)
            return UNSURE;
    keys->start[keys->count] = start;
    keys->stop[keys->count++] = stop;
    return 0;
}

/* The members of one object a reader wants: each one's last value (json.loads keeps the last of
 * a repeated key) as the span of its JSON text, start NULL while absent; `inner`, the members
 * wanted of that value when it is an object. */
#define MAX_WANTED 3
typedef struct Want {
    int count;
    const char *key[MAX_WANTED];
    struct Want *inner[MAX_WANTED];
    const unsigned char *start[MAX_WANTED], *stop[MAX_WANTED];
} Want;

/* Which of want's keys s[0:n] is (unescaped), or -1. */
static int wanted(const Want *want, const unsigned char *key, const unsigned char *key_end) {
    for (int i = 0; i < want->count; i++)
        if (want->key[i][0] == *key && strlen(want->key[i]) == (size_t)(key_end - key) &&
            memcmp(want->key[i], key, (size_t)(key_end - key)) == 0)
            return i;
    return -1;
}

static void skip_ws(Scan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}

static int is_hex(unsigned char c) { return (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'f'); }

/* One UTF-8 character at s->p (a lead byte >= 0x80), as the "surrogatepass" decoder takes it. */
static int utf8_char(Scan *s) {
    const unsigned char *p = s->p;
    unsigned char c = *p;
    int n;
    unsigned char low = 0x80, high = 0xbf; /* the range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) n = 1;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 2;
        if (c == 0xe0) low = 0xa0; /* not overlong; 0xed's surrogates are passed */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 3;
        if (c == 0xf0) low = 0x90;
        if (c == 0xf4) high = 0x8f;
    } else return BAD;
    if (s->end - p <= n || p[1] < low || p[1] > high) return BAD;
    for (int i = 2; i <= n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf) return BAD;
    s->p += n + 1;
    return 0;
}

/* The bytes a string's scan stops at (1): its end, an escape, a control character, the lead of a
 * multi-byte UTF-8 character; filled in when the module is loaded. */
static unsigned char stops_string[256];

/* A string at s->p (its opening quote); its content's bytes, and whether it holds an escape. */
static int string(Scan *s, const unsigned char **start, const unsigned char **stop, int *escaped) {
    s->p++;
    *start = s->p;
    *escaped = 0;
    for (;;) {
        const unsigned char *p = s->p, *end = s->end;
        while (p < end && !stops_string[*p]) p++;
        s->p = p;
        if (p == end) return BAD;
        unsigned char c = *p;
        if (c == '"') {
            *stop = s->p++;
            return 0;
        }
        if (c < 0x20) return BAD;
        if (c == '\\') {
            *escaped = 1;
            if (s->end - s->p < 2) return BAD;
            c = s->p[1];
            if (c == 'u') {
                if (s->end - s->p < 6) return BAD;
                for (int i = 2; i < 6; i++)
                    if (!is_hex(s->p[i])) return BAD;
                s->p += 6;
            } else if (strchr("\"\\/bfnrt", c) != NULL && c != '\0') {
                s->p += 2;
            } else return BAD;
        } else if (utf8_char(s) < 0) return BAD;
    }
}

static int digits(Scan *s) {
    const unsigned char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') s->p++;
    return (int)(s->p - start > MAX_INT_DIGITS ? MAX_INT_DIGITS + 1 : s->p - start);
}

/* A number, as json's scanner matches one: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][-+]?[0-9]+)?, the
 * fraction and exponent only when digits follow (else the number ends before them). */
static int number(Scan *s) {
    if (*s->p == '-') s->p++;
    if (s->p == s->end || *s->p < '0' || *s->p > '9') return BAD;
    int whole = *s->p == '0' ? (s->p++, 1) : digits(s);
    int plain = 1;
    if (s->end - s->p >= 2 && s->p[0] == '.' && s->p[1] >= '0' && s->p[1] <= '9') {
        s->p++;
        digits(s);
        plain = 0;
    }
    if (s->end - s->p >= 2 && (s->p[0] | 32) == 'e') {
        const unsigned char *e = s->p + 1;
        if (e < s->end && (*e == '+' || *e == '-')) e++;
        if (e < s->end && *e >= '0' && *e <= '9') {
            s->p = e;
            digits(s);
            plain = 0;
        }
    }
    return plain && whole > MAX_INT_DIGITS ? UNSURE : 0;
}

static int word(Scan *s, const char *text) {
    size_t n = strlen(text);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, text, n) != 0) return BAD;
    s->p += n;
    return 0;
}

static int value(Scan *s, Want *want);

static int members(Scan *s, Want *want) {
    Keys keys;
    keys.count = 0;
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == '}') return s->p++, 0;
    for (;;) {
        const unsigned char *key, *key_end;
        int escaped, r, i = -1;
        if (s->p == s->end || *s->p != '"' || string(s, &key, &key_end, &escaped) < 0) return BAD;
        if (want != NULL) {
            if (escaped) return UNSURE; /* it could spell a wanted key */
            i = wanted(want, key, key_end);
        }
        if (s->unique_keys && (escaped || new_key(&keys, key, key_end) < 0)) return UNSURE;
        skip_ws(s);
        if (s->p == s->end || *s->p++ != ':') return BAD;
        skip_ws(s);
        const unsigned char *start = s->p;
        r = value(s, i >= 0 ? want->inner[i] : NULL);
        if (r < 0) return r;
        if (i >= 0) {
            want->start[i] = start;
            want->stop[i] = s->p;
        }
        skip_ws(s);
        if (s->p == s->end) return BAD;
        if (*s->p == '}') return s->p++, 0;
        if (*s->p++ != ',') return BAD;
        skip_ws(s);
    }
}

static int elements(Scan *s) {
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == ']') return s->p++, 0;
    for (;;) {
        int r = value(s, NULL);
        if (r < 0) return r;
        skip_ws(s);
        if (s->p == s->end) return BAD;
        if (*s->p == ']') return s->p++, 0;
        if (*s->p++ != ',') return BAD;
        skip_ws(s);
    }
}

/* One value at s->p; `want` collects members of the object there, if it is one. */
static int value(Scan *s, Want *want) {
    if (s->p == s->end) return BAD;
    const unsigned char *start, *stop;
    int escaped, r;
    switch (*s->p) {
    case '"':
        return string(s, &start, &stop, &escaped);
    case '{':
    case '[':
        if (++s->depth > MAX_DEPTH) return UNSURE;
        r = *s->p == '{' ? members(s, want) : elements(s);
        s->depth--;
        return r;
    case 'n':
        return word(s, "null");
    case 't':
        return word(s, "true");
    case 'f':
        return word(s, "false");
    case 'N':
        return word(s, "NaN");
    case 'I':
        return word(s, "Infinity");
    case '-':
        if (s->end - s->p > 1 && s->p[1] == 'I') return s->p++, word(s, "Infinity");
        return number(s);
    default:
        return number(s);
    }
}

/* A scan of the body raw (TypeError unless it is bytes). */
static int start_scan(Scan *s, PyObject *raw, int unique_keys) {
    if (!PyBytes_Check(raw)) {
        PyErr_SetString(PyExc_TypeError, "the body must be bytes");
        return -1;
    }
    s->p = (const unsigned char *)PyBytes_AS_STRING(raw);
    s->end = s->p + PyBytes_GET_SIZE(raw);
    s->depth = 0;
    s->unique_keys = unique_keys;
    return 0;
}

/* The MCP methods as shared (interned) strs: a request's method is one of these nearly always,
 * and a shared str is not decoded again, and its hash (policy's and the metrics' lookups) is
 * computed once. */
static const char *const known_methods[] = {
    "tools/call", "tools/list", "initialize", "notifications/initialized", "ping",
    "resources/read", "resources/list", "resources/templates/list", "prompts/get", "prompts/list",
    "notifications/cancelled", "notifications/progress", "completion/complete", "logging/setLevel",
};
#define KNOWN_METHODS (sizeof known_methods / sizeof known_methods[0])
static PyObject *known_strs[KNOWN_METHODS];
static size_t known_lengths[KNOWN_METHODS];

static PyObject *known_method(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < KNOWN_METHODS; i++)
        if (known_lengths[i] == n && memcmp(known_methods[i], s, n) == 0) return Py_NewRef(known_strs[i]);
    return NULL;
}

/* A wanted member's string value (the span of its JSON text), NULL with *unsure set when it
 * holds an escape (only the full parse decodes those), Py_None when it is absent or no string;
 * for a method, the shared str where it is a known one. */
static PyObject *text_of(const Want *want, int i, int *unsure, int is_method) {
    const unsigned char *start = want->start[i], *stop = want->stop[i];
    if (start == NULL || *start != '"') return Py_NewRef(Py_None);
    size_t n = (size_t)(stop - start - 2);
    if (memchr(start + 1, '\\', n) != NULL) {
        *unsure = 1;
        return NULL;
    }
    PyObject *known = is_method ? known_method(start + 1, n) : NULL;
    if (known != NULL) return known;
    int ascii = 1;
    for (size_t k = 1; k <= n && ascii; k++) ascii = start[k] < 0x80;
    if (!ascii) return PyUnicode_DecodeUTF8((const char *)start + 1, (Py_ssize_t)n, "surrogatepass");
    PyObject *text = PyUnicode_New((Py_ssize_t)n, 127);
    if (text != NULL) memcpy(PyUnicode_1BYTE_DATA(text), start + 1, n);
    return text;
}

/* Whether the scan starts at a single message in UTF-8 (not a batch; a NUL second: UTF-16/32). */
static int single_message(const Scan *s) { return s->end - s->p >= 2 && s->p[0] == '{' && s->p[1] != '\0'; }

/* Body.method's single message (one scan, no key check); None when unsure. */
static PyObject *method_label(PyObject *module, PyObject *raw) {
    (void)module;
    Scan s;
    if (start_scan(&s, raw, 0) < 0) return NULL;
    if (!single_message(&s)) Py_RETURN_NONE;
    Want top = {1, {"method"}, {NULL}, {NULL}, {NULL}};
    int r = value(&s, &top), unsure = 0;
    if (r == UNSURE) Py_RETURN_NONE;
    skip_ws(&s);
    if (r == BAD || s.p != s.end) return PyUnicode_FromString("-");
    PyObject *method = text_of(&top, 0, &unsure, 1);
    if (method == Py_None) {
        Py_DECREF(method);
        return PyUnicode_FromString("response");
    }
    if (method == NULL && unsure) Py_RETURN_NONE;
    return method;
}

/* A message's "id" as json.loads makes it and jsonrpc.id_of keeps it: a string, an integer of up
 * to 18 digits, None for null, true, false, an object or an array; NULL with *unsure set for a
 * fraction, an exponent, NaN, Infinity, a longer integer or an escaped string. */
static PyObject *id_of(const Want *want, int i, int *unsure) {
    const unsigned char *start = want->start[i], *stop = want->stop[i];
    if (start == NULL) return Py_NewRef(Py_None);
    switch (*start) {
    case '"':
        return text_of(want, i, unsure, 0);
    case 'n': case 't': case 'f': case '{': case '[':
        return Py_NewRef(Py_None);
    }
    size_t n = (size_t)(stop - start);
    if (n > 19 || memchr(start, '.', n) || memchr(start, 'e', n) || memchr(start, 'E', n) ||
        memchr(start, 'N', n) || memchr(start, 'I', n) || n - (*start == '-') > 18) {
        *unsure = 1;
        return NULL;
    }
    /* at most 18 digits (the scan checked the grammar): a long long holds it */
    int negative = *start == '-';
    long long v = 0;
    for (const unsigned char *c = start + negative; c < stop; c++) v = v * 10 + (*c - '0');
    return PyLong_FromLongLong(negative ? -v : v);
}

static PyObject *message_head(PyObject *module, PyObject *raw) {
    (void)module;
    Scan s;
    if (start_scan(&s, raw, 1) < 0) return NULL;
    if (!single_message(&s)) Py_RETURN_NONE;
    Want params = {2, {"name", "uri"}, {NULL}, {NULL}, {NULL}};
    Want top = {3, {"method", "id", "params"}, {NULL, NULL, &params}, {NULL}, {NULL}};
    int r = value(&s, &top), unsure = 0;
    skip_ws(&s);
    if (r != 0 || s.p != s.end) Py_RETURN_NONE;
    PyObject *fields[4] = {text_of(&top, 0, &unsure, 1), id_of(&top, 1, &unsure), text_of(&params, 0, &unsure, 0),
                           text_of(&params, 1, &unsure, 0)};
    PyObject *head = NULL;
    if (fields[0] != NULL && fields[1] != NULL && fields[2] != NULL && fields[3] != NULL)
        head = PyTuple_Pack(5, fields[0], top.start[1] != NULL ? Py_True : Py_False, fields[1], fields[2], fields[3]);
    for (int i = 0; i < 4; i++) Py_XDECREF(fields[i]);
    if (head == NULL && unsure && !PyErr_Occurred()) Py_RETURN_NONE;
    return head;
}

static PyObject *keys_unique(PyObject *module, PyObject *raw) {
    (void)module;
    Scan s;
    if (start_scan(&s, raw, 1) < 0) return NULL;
    const unsigned char *p = s.p;
    if (s.end - p < 2 || (p[0] != '{' && p[0] != '[') || p[1] == '\0') Py_RETURN_FALSE;
    int r = value(&s, NULL);
    skip_ws(&s);
    return PyBool_FromLong(r == 0 && s.p == s.end);
}

static PyMethodDef methods[] = {
    {"method_label", method_label, METH_O, "The MCP method Body.method gives a body, or None."},
    {"keys_unique", keys_unique, METH_O, "Whether the body is JSON whose objects repeat no key (False: unsure)."},
    {"message_head", message_head, METH_O, "What policy reads of a single message, or None: only the full parse can tell."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "mcpproxy._jsonrpc", "A JSON-RPC body's MCP method and key check, in C.", 0, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jsonrpc(void) {
    for (int c = 0; c < 256; c++) stops_string[c] = c < 0x20 || c == '"' || c == '\\' || c >= 0x80;
    for (size_t i = 0; i < KNOWN_METHODS; i++) {
        known_lengths[i] = strlen(known_methods[i]);
        if (known_strs[i] == NULL && (known_strs[i] = PyUnicode_InternFromString(known_methods[i])) == NULL)
            return NULL;
    }
    return PyModule_Create(&module);
}
