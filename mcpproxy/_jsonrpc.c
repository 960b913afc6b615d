/* The MCP method of a JSON-RPC body, read without building it: mcpproxy/jsonrpc.py's Body.
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

/* The top-level "method" member last seen: its value's string bytes, or not a string. */
typedef struct {
    int seen, is_string;
    const unsigned char *start, *stop;
} Method;

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

/* A string at s->p (its opening quote); its content's bytes, and whether it holds an escape. */
static int string(Scan *s, const unsigned char **start, const unsigned char **stop, int *escaped) {
    s->p++;
    *start = s->p;
    *escaped = 0;
    while (s->p < s->end) {
        unsigned char c = *s->p;
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
        } else if (c >= 0x80) {
            if (utf8_char(s) < 0) return BAD;
        } else s->p++;
    }
    return BAD;
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

static int value(Scan *s, Method *method);

static int members(Scan *s, Method *method) {
    Keys keys;
    keys.count = 0;
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == '}') return s->p++, 0;
    for (;;) {
        const unsigned char *key, *key_end;
        int escaped, r;
        if (s->p == s->end || *s->p != '"' || string(s, &key, &key_end, &escaped) < 0) return BAD;
        int is_method = method != NULL && key_end - key == 6 && memcmp(key, "method", 6) == 0;
        if (method != NULL && escaped) return UNSURE; /* a top-level key could spell "method" */
        if (s->unique_keys && (escaped || new_key(&keys, key, key_end) < 0)) return UNSURE;
        skip_ws(s);
        if (s->p == s->end || *s->p++ != ':') return BAD;
        skip_ws(s);
        if (is_method && s->p < s->end && *s->p == '"') {
            r = string(s, &method->start, &method->stop, &escaped);
            if (r == 0 && escaped) r = UNSURE;
            method->is_string = 1;
        } else {
            if (is_method) method->is_string = 0;
            r = value(s, NULL);
        }
        if (r < 0) return r;
        if (is_method) method->seen = 1;
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

/* One value at s->p; `method` collects the "method" member of the object there (top level). */
static int value(Scan *s, Method *method) {
    if (s->p == s->end) return BAD;
    const unsigned char *start, *stop;
    int escaped, r;
    switch (*s->p) {
    case '"':
        return string(s, &start, &stop, &escaped);
    case '{':
    case '[':
        if (++s->depth > MAX_DEPTH) return UNSURE;
        r = *s->p == '{' ? members(s, method) : elements(s);
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

static PyObject *method_label(PyObject *module, PyObject *raw) {
    (void)module;
    Scan s;
    if (start_scan(&s, raw, 0) < 0) return NULL;
    const unsigned char *p = s.p;
    if (s.end - p < 2 || p[0] != '{' || p[1] == '\0') Py_RETURN_NONE;
    Method method = {0, 0, NULL, NULL};
    int r = value(&s, &method);
    if (r == UNSURE) Py_RETURN_NONE;
    skip_ws(&s);
    if (r == BAD || s.p != s.end) return PyUnicode_FromString("-");
    if (!method.seen || !method.is_string) return PyUnicode_FromString("response");
    return PyUnicode_DecodeUTF8((const char *)method.start, method.stop - method.start, "surrogatepass");
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "mcpproxy._jsonrpc", "A JSON-RPC body's MCP method and key check, in C.", 0, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jsonrpc(void) { return PyModule_Create(&module); }
