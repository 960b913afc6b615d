/* The request and response head parsers of mcpproxy/http1.py, in C.
 *
 * mcpproxy/_http1.py is the same module in Python: what a build without a C compiler runs, and
 * the reference tests/test_http1.py checks this file against on generated input. Built, this
 * extension is imported in its place. Each call scans a head once (a request's ~1 KB bearer
 * token eight bytes at a step) and builds only the objects the relay keeps.
 *
 * request_head(block: bytes) -> (method, target, lines, names, pairs, length, keep_alive, host) | None
 *     A whole request head (block ends with the blank line) in the subset the relay serves:
 *     POST, GET or DELETE of an origin-form target of visible ASCII, HTTP/1.1; every field
 *     token ":" value  of HTAB, SP and visible ASCII, every line ending with CRLF; exactly one
 *     Host, at most one Content-Length (1 to 15 digits), no Transfer-Encoding, Expect, Upgrade
 *     or HTTP2-Settings. keep_alive is False when a Connection field holds "close". None for
 *     anything else (the relay then hands the request to aiohttp's parser).
 * response_head(block: bytes) -> (status, reason, lines, names, framing, length, keep_alive,
 *                                 content_type) | str
 *     An upstream's head (block ends with the blank line), lenient as to content: any byte but
 *     CR and LF (Latin-1); a name must not be empty or start or end with white space
 *     (str.isspace). Strict as to framing: framing is the index of http1.Framing's member, after
 *     Transfer-Encoding (chunked last, no Content-Length beside it), else one Content-Length
 *     (repeats must be equal), else none (NONE for 1xx, 204 and 304). content_type is the
 *     media type in lower case, "" without one. A str is what is wrong with the head.
 * find_head_end(data: bytes | bytearray) -> int
 *     Where the head in data ends (just past its first CRLF CRLF), or -1.
 * encode_head(start: str, lines: list[str], body: bytes) -> bytes
 *     start, each line, each followed by CRLF, a blank line, then body: one message in one
 *     bytes object, its text encoded as Latin-1 (UnicodeEncodeError past U+00FF). The relay's
 *     lines are checked already; this only copies them.
 *
 * lines are the field lines as received, names their names in lower case; a pair is the name as
 * sent (a multidict istr for a common name, see common_names) and the value without surrounding
 * SP and HTAB.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define VALUE 1 /* may be in a request's field value: HTAB, SP, visible ASCII */
#define TOKEN 2 /* may be in a field name (RFC 9110 token) */
static unsigned char byte_class[256];

static void init_classes(void) {
    const char *token_marks = "!#$%&'*+-.^_`|~";
    byte_class['\t'] = VALUE;
    for (int c = 0x20; c < 0x7f; c++) byte_class[c] = VALUE;
    for (int c = '0'; c <= '9'; c++) byte_class[c] |= TOKEN;
    for (int c = 'a'; c <= 'z'; c++) byte_class[c] |= TOKEN;
    for (int c = 'A'; c <= 'Z'; c++) byte_class[c] |= TOKEN;
    for (const char *t = token_marks; *t; t++) byte_class[(unsigned char)*t] |= TOKEN;
}

/* Where the run of request value bytes that starts at p ends. Eight bytes at a step while a
 * word holds nothing but SP and visible ASCII; a byte at a time from the first word that may
 * hold anything else (HTAB, CR, a control, a byte above 0x7e). */
static const unsigned char *request_value_end(const unsigned char *p, const unsigned char *end) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (end - p >= 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        uint64_t below_space = (x - ones * 0x20) & ~x & highs; /* nonzero iff a byte < 0x20 */
        uint64_t del_or_high = ((x + ones) | x) & highs;       /* nonzero iff a byte >= 0x7f */
        if (below_space | del_or_high) break;
        p += 8;
    }
    while (p < end && (byte_class[*p] & VALUE)) p++;
    return p;
}

/* Where a response value that starts at p ends: its first CR or LF (memchr, not a loop). */
static const unsigned char *response_value_end(const unsigned char *p, const unsigned char *end) {
    const unsigned char *cr = memchr(p, '\r', (size_t)(end - p));
    const unsigned char *stop = cr != NULL ? cr : end;
    const unsigned char *lf = memchr(p, '\n', (size_t)(stop - p));
    return lf != NULL ? lf : stop;
}

/* str.isspace() of a Latin-1 character */
static int is_space(unsigned char c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0;
}

static PyObject *ascii_text(const unsigned char *s, Py_ssize_t n) {
    PyObject *text = PyUnicode_New(n, 127);
    if (text != NULL) memcpy(PyUnicode_1BYTE_DATA(text), s, (size_t)n);
    return text;
}

static PyObject *ascii_lower(const unsigned char *s, Py_ssize_t n) {
    PyObject *text = PyUnicode_New(n, 127);
    if (text == NULL) return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    for (Py_ssize_t i = 0; i < n; i++) out[i] = (s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i];
    return text;
}

static PyObject *latin1_text(const unsigned char *s, Py_ssize_t n) {
    return PyUnicode_DecodeLatin1((const char *)s, n, NULL);
}

/* One field line's pieces, as the scan found them. */
typedef struct {
    const unsigned char *start, *colon, *end; /* the line (without CRLF) and its first colon */
    const unsigned char *value, *value_end;   /* the value without surrounding SP and HTAB */
    int name_ascii;
} Line;

/* Scans the line at *at; 0 and *at past its CRLF when it is well formed, -1 when it is not.
 * *last is set when it is the block's last line. */
static int scan_line(const unsigned char **at, const unsigned char *end, int strict, Line *line, int *last) {
    const unsigned char *p = *at;
    line->start = p;
    line->name_ascii = 1;
    if (strict) {
        while (p < end && (byte_class[*p] & TOKEN)) p++;
    } else {
        for (; p < end && *p != ':' && *p != '\r' && *p != '\n'; p++)
            if (*p >= 0x80) line->name_ascii = 0;
    }
    if (p == end || *p != ':' || p == line->start) return -1;
    if (!strict && (is_space(line->start[0]) || is_space(p[-1]))) return -1;
    line->colon = p++;
    p = strict ? request_value_end(p, end) : response_value_end(p, end);
    line->end = p;
    *last = p == end;
    if (!*last) {
        /* only a CRLF may end a line, and a last line that is empty is not a field */
        if (*p != '\r' || end - p < 3 || p[1] != '\n') return -1;
        p += 2;
    }
    const unsigned char *v = line->colon + 1, *v_end = line->end;
    while (v < v_end && (*v == ' ' || *v == '\t')) v++;
    while (v_end > v && (v_end[-1] == ' ' || v_end[-1] == '\t')) v_end--;
    line->value = v;
    line->value_end = v_end;
    *at = p;
    return 0;
}

static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL) return -1;
    int failed = PyList_Append(list, item);
    Py_DECREF(item);
    return failed;
}

/* Whether the name s[0:n] is `lower` (a lower-case name) in any case. */
static int name_is(const unsigned char *s, Py_ssize_t n, const char *lower) {
    if ((size_t)n != strlen(lower)) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i];
        if (c != (unsigned char)lower[i]) return 0;
    }
    return 1;
}

/* The field names MCP clients and servers send on every message, each as one str in lower case
 * and one in the spelling most clients send: a name that is one of them takes these objects
 * instead of two new strings. In a request's (name, value) pairs, a common name is one of the
 * same spellings as a multidict istr, which carries its case-folded form: the CIMultiDict the
 * relay builds from the pairs then folds no name, at a quarter of the cost. Built once, when the
 * module is loaded; never changed. */
static const char *const common_names[][2] = {
    {"host", "Host"},
    {"accept", "Accept"},
    {"accept-encoding", "Accept-Encoding"},
    {"authorization", "Authorization"},
    {"connection", "Connection"},
    {"content-length", "Content-Length"},
    {"content-type", "Content-Type"},
    {"user-agent", "User-Agent"},
    {"mcp-protocol-version", "Mcp-Protocol-Version"},
    {"mcp-session-id", "Mcp-Session-Id"},
    {"last-event-id", "Last-Event-ID"},
    {"x-llamastack-provider-data", "X-LlamaStack-Provider-Data"},
    {"x-ogx-provider-data", "X-OGX-Provider-Data"},
    {"traceparent", "traceparent"},
    {"date", "Date"},
    {"server", "Server"},
    {"cache-control", "Cache-Control"},
    {"transfer-encoding", "Transfer-Encoding"},
};
#define COMMON_NAMES (sizeof common_names / sizeof common_names[0])
static PyObject *common_strs[COMMON_NAMES][2];
static PyObject *common_istrs[COMMON_NAMES][2];
static Py_ssize_t common_lengths[COMMON_NAMES];

/* The index of the common name s[0:n] is (in any case), or -1. A candidate has the length and
 * the first letter; as sent in one of its two spellings it is a memcmp, else a compare that
 * folds case. */
static int common_name(const unsigned char *s, Py_ssize_t n) {
    if (n == 0) return -1;
    unsigned char first = (s[0] >= 'A' && s[0] <= 'Z') ? s[0] + 32 : s[0];
    for (size_t i = 0; i < COMMON_NAMES; i++) {
        const char *const *forms = common_names[i];
        if (common_lengths[i] != n || (unsigned char)forms[0][0] != first) continue;
        if (memcmp(s, forms[1], (size_t)n) == 0 || memcmp(s, forms[0], (size_t)n) == 0 || name_is(s, n, forms[0]))
            return (int)i;
    }
    return -1;
}

/* The name s[0:n] in lower case (its common str when it is a common name). */
static PyObject *lower_name(const unsigned char *s, Py_ssize_t n, int common) {
    return common >= 0 ? Py_NewRef(common_strs[common][0]) : ascii_lower(s, n);
}

/* The name s[0:n] as sent (a common istr when it is spelt as one). */
static PyObject *sent_name(const unsigned char *s, Py_ssize_t n, int common) {
    for (int form = 0; common >= 0 && form < 2; form++)
        if (memcmp(s, common_names[common][form], (size_t)n) == 0) return Py_NewRef(common_istrs[common][form]);
    return ascii_text(s, n);
}

/* The request's pieces of one line: its text, lower-case name, and (name, value). */
static int add_request_line(const Line *line, PyObject *lines, PyObject *names, PyObject *pairs) {
    Py_ssize_t name_len = line->colon - line->start;
    int common = common_name(line->start, name_len);
    if (append_new(lines, ascii_text(line->start, line->end - line->start)) < 0) return -1;
    if (append_new(names, lower_name(line->start, name_len, common)) < 0) return -1;
    PyObject *name = sent_name(line->start, name_len, common);
    PyObject *value = ascii_text(line->value, line->value_end - line->value);
    PyObject *pair = (name != NULL && value != NULL) ? PyTuple_Pack(2, name, value) : NULL;
    Py_XDECREF(name);
    Py_XDECREF(value);
    return append_new(pairs, pair);
}

/* The response's pieces of one line: its text and lower-case name. */
static int add_response_line(const Line *line, PyObject *lines, PyObject *names) {
    Py_ssize_t name_len = line->colon - line->start;
    PyObject *lower;
    if (line->name_ascii) {
        lower = lower_name(line->start, name_len, common_name(line->start, name_len));
    } else {
        PyObject *name = latin1_text(line->start, name_len);
        lower = name != NULL ? PyObject_CallMethod(name, "lower", NULL) : NULL;
        Py_XDECREF(name);
    }
    if (append_new(lines, latin1_text(line->start, line->end - line->start)) < 0) return -1;
    return append_new(names, lower);
}

/* --- whole request heads ------------------------------------------------------------- */

static PyObject *method_names[3]; /* "POST", "GET", "DELETE": the same objects every request */
static const char *const method_bytes[3] = {"POST", "GET", "DELETE"};

/* The method's shared str, or NULL when the relay does not serve it. */
static PyObject *relayed_method(const unsigned char *s, Py_ssize_t n) {
    for (int i = 0; i < 3; i++)
        if ((size_t)n == strlen(method_bytes[i]) && memcmp(s, method_bytes[i], (size_t)n) == 0)
            return method_names[i];
    return NULL;
}

/* Whether s[0:n] holds `lower` in any case ("close" in Connection: close, also within a list). */
static int holds(const unsigned char *s, Py_ssize_t n, const char *lower) {
    Py_ssize_t k = (Py_ssize_t)strlen(lower);
    for (Py_ssize_t i = 0; i + k <= n; i++)
        if (name_is(s + i, k, lower)) return 1;
    return 0;
}

/* What the head's fields say about serving it, collected while they are split. */
typedef struct {
    int hosts, lengths, refused, close;
    const unsigned char *length, *length_end; /* the one Content-Length value */
    PyObject *host;                           /* the one Host value (borrowed from its pair) */
} Facts;

static void note_field(const Line *line, PyObject *pairs, Facts *facts) {
    const unsigned char *name = line->start;
    Py_ssize_t n = line->colon - line->start;
    if (name_is(name, n, "host")) {
        facts->hosts++;
        facts->host = PyTuple_GET_ITEM(PyList_GET_ITEM(pairs, PyList_GET_SIZE(pairs) - 1), 1);
    } else if (name_is(name, n, "content-length")) {
        facts->lengths++;
        facts->length = line->value;
        facts->length_end = line->value_end;
    } else if (name_is(name, n, "connection")) {
        facts->close |= holds(line->value, line->value_end - line->value, "close");
    } else if (name_is(name, n, "transfer-encoding") || name_is(name, n, "expect") ||
               name_is(name, n, "upgrade") || name_is(name, n, "http2-settings")) {
        facts->refused = 1;
    }
}

/* The Content-Length value as a number: 1 to 15 ASCII digits, else -1. */
static long long decimal(const unsigned char *s, const unsigned char *end) {
    if (end - s < 1 || end - s > 15) return -1;
    long long value = 0;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9') return -1;
        value = value * 10 + (*s - '0');
    }
    return value;
}

/* The request line's method (shared str), and where its target starts and ends; NULL unless it
 * is  method SP target SP "HTTP/1.1"  with a relayed method and an origin-form target. */
static PyObject *request_line(const unsigned char *p, const unsigned char *end,
                              const unsigned char **target, const unsigned char **target_end) {
    const unsigned char *sp1 = memchr(p, ' ', (size_t)(end - p));
    if (sp1 == NULL) return NULL;
    const unsigned char *sp2 = memchr(sp1 + 1, ' ', (size_t)(end - sp1 - 1));
    if (sp2 == NULL || end - sp2 != 9 || memcmp(sp2 + 1, "HTTP/1.1", 8) != 0) return NULL;
    if (sp2 == sp1 + 1 || sp1[1] != '/') return NULL;
    for (const unsigned char *t = sp1 + 1; t < sp2; t++)
        if (*t < 0x21 || *t > 0x7e) return NULL;
    *target = sp1 + 1;
    *target_end = sp2;
    return relayed_method(p, sp1 - p);
}

static PyObject *head_result(PyObject *method, const unsigned char *target, const unsigned char *target_end,
                             PyObject *lines, PyObject *names, PyObject *pairs, const Facts *facts) {
    long long length = 0;
    if (facts->lengths == 1) length = decimal(facts->length, facts->length_end);
    if (facts->refused || facts->hosts != 1 || facts->lengths > 1 || length < 0) Py_RETURN_NONE;
    PyObject *text = ascii_text(target, target_end - target);
    PyObject *number = text != NULL ? PyLong_FromLongLong(length) : NULL;
    PyObject *result = NULL;
    if (number != NULL)
        result = PyTuple_Pack(8, method, text, lines, names, pairs, number,
                              facts->close ? Py_False : Py_True, facts->host);
    Py_XDECREF(text);
    Py_XDECREF(number);
    return result;
}

/* A head's bytes (p to end) and the end of its first line: 1, or 0 when it does not end with
 * the blank line, or -1 (TypeError) when it is not bytes. */
static int head_bounds(PyObject *block, const unsigned char **p, const unsigned char **end,
                       const unsigned char **line_end) {
    if (!PyBytes_Check(block)) {
        PyErr_SetString(PyExc_TypeError, "the head must be bytes");
        return -1;
    }
    *p = (const unsigned char *)PyBytes_AS_STRING(block);
    *end = *p + PyBytes_GET_SIZE(block);
    if (*end - *p < 4 || memcmp(*end - 4, "\r\n\r\n", 4) != 0) return 0;
    const unsigned char *at = *p;
    while (!(at[0] == '\r' && at[1] == '\n')) at++; /* stops at the end's CRLF */
    *line_end = at;
    return 1;
}

static PyObject *request_head(PyObject *module, PyObject *block) {
    const unsigned char *p, *end, *line_end;
    int bounds = head_bounds(block, &p, &end, &line_end);
    if (bounds <= 0) return bounds < 0 ? NULL : Py_NewRef(Py_None);
    const unsigned char *target, *target_end;
    PyObject *method = request_line(p, line_end, &target, &target_end);
    const unsigned char *field = line_end + 2, *fields_end = end - 4;
    if (method == NULL || field >= fields_end) Py_RETURN_NONE; /* no field: no Host */
    PyObject *lines = PyList_New(0), *names = PyList_New(0), *pairs = PyList_New(0);
    PyObject *result = NULL;
    if (lines == NULL || names == NULL || pairs == NULL) goto done;
    Facts facts = {0, 0, 0, 0, NULL, NULL, NULL};
    for (int last = 0; !last;) {
        Line line;
        if (scan_line(&field, fields_end, 1, &line, &last) < 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        if (add_request_line(&line, lines, names, pairs) < 0) goto done;
        note_field(&line, pairs, &facts);
    }
    result = head_result(method, target, target_end, lines, names, pairs, &facts);
done:
    Py_XDECREF(lines);
    Py_XDECREF(names);
    Py_XDECREF(pairs);
    return result;
}

static PyObject *find_head_end(PyObject *module, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *start = view.buf, *end = start + view.len, *p = start;
    Py_ssize_t found = -1;
    while ((p = memchr(p, '\r', (size_t)(end - p))) != NULL && end - p >= 4) {
        if (p[1] == '\n' && p[2] == '\r' && p[3] == '\n') {
            found = p - start + 4;
            break;
        }
        p++;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(found);
}

/* --- whole response heads ------------------------------------------------------------ */

enum { FRAMING_NONE, FRAMING_LENGTH, FRAMING_CHUNKED, FRAMING_CLOSE }; /* http1.Framing, in order */

/* What a response head's fields say about its framing and reuse, collected while they are split. */
typedef struct {
    int close, keep_alive, codings, lengths, lengths_differ;
    const unsigned char *coding, *coding_end; /* the last Transfer-Encoding value */
    const unsigned char *length, *length_end; /* the first Content-Length value */
    const unsigned char *media, *media_end;   /* the first Content-Type value */
} FramingFields;

static void note_framing(const Line *line, FramingFields *f) {
    const unsigned char *name = line->start, *v = line->value, *v_end = line->value_end;
    Py_ssize_t n = line->colon - line->start;
    if (name_is(name, n, "connection")) {
        f->close |= holds(v, v_end - v, "close");
        f->keep_alive |= holds(v, v_end - v, "keep-alive");
    } else if (name_is(name, n, "transfer-encoding")) {
        f->codings++;
        f->coding = v;
        f->coding_end = v_end;
    } else if (name_is(name, n, "content-length")) {
        if (f->lengths++ == 0) {
            f->length = v;
            f->length_end = v_end;
        } else if (v_end - v != f->length_end - f->length || memcmp(v, f->length, (size_t)(v_end - v)) != 0) {
            f->lengths_differ = 1;
        }
    } else if (f->media == NULL && name_is(name, n, "content-type")) {
        f->media = v;
        f->media_end = v_end;
    }
}

/* s[0:n] without leading and trailing str.isspace() characters (Latin-1). */
static void strip_space(const unsigned char **s, const unsigned char **end) {
    while (*s < *end && is_space(**s)) (*s)++;
    while (*end > *s && is_space((*end)[-1])) (*end)--;
}

/* The media type: the Content-Type value before any ";", stripped, lower case; "" without one. */
static PyObject *media_type(const FramingFields *f) {
    if (f->media == NULL) return PyUnicode_New(0, 127);
    const unsigned char *s = f->media, *end = memchr(s, ';', (size_t)(f->media_end - s));
    if (end == NULL) end = f->media_end;
    strip_space(&s, &end);
    for (const unsigned char *c = s; c < end; c++) {
        if (*c >= 0x80) { /* Latin-1 letters have case too: str.lower() knows them */
            PyObject *text = latin1_text(s, end - s);
            PyObject *lower = text != NULL ? PyObject_CallMethod(text, "lower", NULL) : NULL;
            Py_XDECREF(text);
            return lower;
        }
    }
    return ascii_lower(s, end - s);
}

/* Whether the last transfer coding (after the last comma of the last field) is chunked. */
static int ends_chunked(const FramingFields *f) {
    const unsigned char *s = f->coding, *end = f->coding_end;
    for (const unsigned char *c = end; c > s; c--)
        if (c[-1] == ',') {
            s = c;
            break;
        }
    strip_space(&s, &end);
    return name_is(s, end - s, "chunked");
}

/* The framing (FRAMING_*), with the length and reuse; *error set when the head frames no body
 * the relay can pass on. */
static int frame(int status, int http11, const FramingFields *f, long long *length, int *keep_alive,
                 const char **error) {
    *keep_alive = http11 ? !f->close : f->keep_alive;
    *length = 0;
    if (status < 200 || status == 204 || status == 304) return FRAMING_NONE;
    if (f->codings) {
        if (!ends_chunked(f) || f->lengths) *error = "unsupported or conflicting transfer coding";
        return FRAMING_CHUNKED;
    }
    if (f->lengths) {
        if (f->lengths_differ) *error = "conflicting Content-Length";
        else if ((*length = decimal(f->length, f->length_end)) < 0) *error = "malformed Content-Length";
        return FRAMING_LENGTH;
    }
    *keep_alive = 0;
    return FRAMING_CLOSE;
}

/* The status code of  "HTTP/1.x" SP 3DIGIT [SP reason], or -1. */
static int status_code(const unsigned char *p, const unsigned char *end) {
    if (end - p < 12 || (memcmp(p, "HTTP/1.1 ", 9) != 0 && memcmp(p, "HTTP/1.0 ", 9) != 0)) return -1;
    for (int i = 9; i < 12; i++)
        if (p[i] < '0' || p[i] > '9') return -1;
    if (end - p > 12 && p[12] != ' ') return -1;
    return (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
}

static PyObject *response_result(int status, const unsigned char *reason, const unsigned char *reason_end,
                                 PyObject *lines, PyObject *names, const FramingFields *f, int http11) {
    long long length;
    int keep_alive;
    const char *error = NULL;
    int kind = frame(status, http11, f, &length, &keep_alive, &error);
    if (error != NULL) return PyUnicode_FromString(error);
    PyObject *items[5] = {PyLong_FromLong(status), latin1_text(reason, reason_end - reason),
                          PyLong_FromLong(kind), PyLong_FromLongLong(length), media_type(f)};
    PyObject *result = NULL;
    if (items[0] && items[1] && items[2] && items[3] && items[4])
        result = PyTuple_Pack(8, items[0], items[1], lines, names, items[2], items[3],
                              keep_alive ? Py_True : Py_False, items[4]);
    for (int i = 0; i < 5; i++) Py_XDECREF(items[i]);
    return result;
}

static PyObject *response_head(PyObject *module, PyObject *block) {
    const unsigned char *p, *end, *line_end;
    int bounds = head_bounds(block, &p, &end, &line_end);
    if (bounds <= 0) return bounds < 0 ? NULL : PyUnicode_FromString("malformed header field");
    for (const unsigned char *c = p; c < line_end; c++)
        if (*c == '\r' || *c == '\n') return PyUnicode_FromString("malformed header field");
    int status = status_code(p, line_end);
    if (status < 0) return PyUnicode_FromString("malformed status line");
    const unsigned char *reason = line_end - p > 12 ? p + 13 : line_end;
    const unsigned char *field = line_end + 2, *fields_end = end - 4;
    PyObject *lines = PyList_New(0), *names = PyList_New(0);
    PyObject *result = NULL;
    if (lines == NULL || names == NULL) goto done;
    FramingFields framing = {0, 0, 0, 0, 0, NULL, NULL, NULL, NULL, NULL, NULL};
    for (int last = field >= fields_end; !last;) {
        Line line;
        if (scan_line(&field, fields_end, 0, &line, &last) < 0) {
            result = PyUnicode_FromString("malformed header field");
            goto done;
        }
        if (add_response_line(&line, lines, names) < 0) goto done;
        note_framing(&line, &framing);
    }
    result = response_result(status, reason, line_end, lines, names, &framing, p[7] == '1');
done:
    Py_XDECREF(lines);
    Py_XDECREF(names);
    return result;
}

/* The Latin-1 length of a head's piece, or -1 with an exception set. A str is stored one byte a
 * character whenever it can be, and those bytes are its Latin-1 encoding; any other str has a
 * character past U+00FF, and the encoder raises the UnicodeEncodeError a caller expects. */
static Py_ssize_t latin1_length(PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "a head's lines must be str");
        return -1;
    }
    if (PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND) return PyUnicode_GET_LENGTH(text);
    PyObject *encoded = PyUnicode_AsLatin1String(text);
    if (encoded != NULL) {
        Py_DECREF(encoded);
        PyErr_SetString(PyExc_SystemError, "a wide str encoded as Latin-1");
    }
    return -1;
}

static PyObject *encode_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyList_Check(args[1]) || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "encode_head(start: str, lines: list[str], body: bytes)");
        return NULL;
    }
    PyObject *lines = args[1], *body = args[2];
    Py_ssize_t count = PyList_GET_SIZE(lines), size = PyBytes_GET_SIZE(body) + 2;
    for (Py_ssize_t i = -1; i < count; i++) {
        Py_ssize_t n = latin1_length(i < 0 ? args[0] : PyList_GET_ITEM(lines, i));
        if (n < 0) return NULL;
        size += n + 2;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) return NULL;
    char *at = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = -1; i < count; i++) {
        PyObject *text = i < 0 ? args[0] : PyList_GET_ITEM(lines, i);
        Py_ssize_t n = PyUnicode_GET_LENGTH(text);
        memcpy(at, PyUnicode_1BYTE_DATA(text), (size_t)n);
        at += n;
        *at++ = '\r';
        *at++ = '\n';
    }
    *at++ = '\r';
    *at++ = '\n';
    memcpy(at, PyBytes_AS_STRING(body), (size_t)PyBytes_GET_SIZE(body));
    return out;
}

static PyMethodDef methods[] = {
    {"request_head", request_head, METH_O, "A whole request head the relay serves, in pieces, or None."},
    {"response_head", response_head, METH_O, "A whole response head, in pieces, or what is wrong with it."},
    {"find_head_end", find_head_end, METH_O, "Where the head in data ends (past its CRLF CRLF), or -1."},
    {"encode_head", (PyCFunction)(void (*)(void))encode_head, METH_FASTCALL,
     "start, lines and body as one message: CRLF after each, a blank line, Latin-1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "mcpproxy._http1",
    "The request and response head parsers of mcpproxy.http1, in C.",
    0,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

static int intern(PyObject **str, const char *text) {
    return *str != NULL || (*str = PyUnicode_InternFromString(text)) != NULL ? 0 : -1;
}

/* The common names as strs and as istrs (see common_names). */
static int make_common_names(void) {
    PyObject *multidict = PyImport_ImportModule("multidict");
    PyObject *istr = multidict != NULL ? PyObject_GetAttrString(multidict, "istr") : NULL;
    Py_XDECREF(multidict);
    int failed = istr == NULL;
    for (size_t i = 0; i < COMMON_NAMES && !failed; i++) {
        common_lengths[i] = (Py_ssize_t)strlen(common_names[i][0]);
        for (int form = 0; form < 2 && !failed; form++) {
            failed = intern(&common_strs[i][form], common_names[i][form]) < 0;
            if (!failed && common_istrs[i][form] == NULL)
                failed = (common_istrs[i][form] = PyObject_CallOneArg(istr, common_strs[i][form])) == NULL;
        }
    }
    Py_XDECREF(istr);
    return failed ? -1 : 0;
}

PyMODINIT_FUNC PyInit__http1(void) {
    init_classes();
    for (int i = 0; i < 3; i++)
        if (intern(&method_names[i], method_bytes[i]) < 0) return NULL;
    if (make_common_names() < 0) return NULL;
    return PyModule_Create(&module);
}
