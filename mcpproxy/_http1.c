/* The header field splitters of mcpproxy/http1.py, in C.
 *
 * mcpproxy/_http1.py is the same module in Python: what a build without a C compiler runs, and
 * the reference tests/test_http1.py checks this file against on generated input. Built, this
 * extension is imported in its place. Each call scans the field block once (a request's ~1 KB
 * bearer token eight bytes at a step) and builds the strings the relay keeps.
 *
 * request_fields(block: bytes) -> (lines, names, pairs) | None
 *     Strict: every line is  token ":" value  of HTAB, SP and visible ASCII, lines end with CRLF.
 *     None for anything else (the relay then hands the request to aiohttp's parser).
 * response_fields(block: bytes) -> (lines, names, values) | None
 *     Lenient as to content: any byte but CR and LF (Latin-1); a name must not be empty or
 *     start or end with white space (str.isspace), and lines end with CRLF. None otherwise.
 *
 * lines are the lines as received, names their names in lower case, values (and the pairs'
 * second items) without surrounding SP and HTAB; a pair's first item is the name as sent.
 * `block` is the fields without the CRLF that ends the last one.
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

static const unsigned char *response_value_end(const unsigned char *p, const unsigned char *end) {
    while (p < end && *p != '\r' && *p != '\n') p++;
    return p;
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

/* The request's pieces of one line: its text, lower-case name, and (name, value). */
static int add_request_line(const Line *line, PyObject *lines, PyObject *names, PyObject *pairs) {
    Py_ssize_t name_len = line->colon - line->start;
    if (append_new(lines, ascii_text(line->start, line->end - line->start)) < 0) return -1;
    if (append_new(names, ascii_lower(line->start, name_len)) < 0) return -1;
    PyObject *name = ascii_text(line->start, name_len);
    PyObject *value = ascii_text(line->value, line->value_end - line->value);
    PyObject *pair = (name != NULL && value != NULL) ? PyTuple_Pack(2, name, value) : NULL;
    Py_XDECREF(name);
    Py_XDECREF(value);
    return append_new(pairs, pair);
}

/* The response's pieces of one line: its text, lower-case name, and value. */
static int add_response_line(const Line *line, PyObject *lines, PyObject *names, PyObject *values) {
    Py_ssize_t name_len = line->colon - line->start;
    PyObject *lower;
    if (line->name_ascii) {
        lower = ascii_lower(line->start, name_len);
    } else {
        PyObject *name = latin1_text(line->start, name_len);
        lower = name != NULL ? PyObject_CallMethod(name, "lower", NULL) : NULL;
        Py_XDECREF(name);
    }
    if (append_new(lines, latin1_text(line->start, line->end - line->start)) < 0) return -1;
    if (append_new(names, lower) < 0) return -1;
    return append_new(values, latin1_text(line->value, line->value_end - line->value));
}

static PyObject *split(PyObject *block, int strict) {
    if (!PyBytes_Check(block)) {
        PyErr_SetString(PyExc_TypeError, "the field block must be bytes");
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(block);
    const unsigned char *end = p + PyBytes_GET_SIZE(block);
    PyObject *lines = PyList_New(0), *names = PyList_New(0), *third = PyList_New(0);
    PyObject *result = NULL;
    if (lines == NULL || names == NULL || third == NULL) goto done;
    int last = p == end;
    while (!last) {
        Line line;
        if (scan_line(&p, end, strict, &line, &last) < 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        int failed = strict ? add_request_line(&line, lines, names, third)
                            : add_response_line(&line, lines, names, third);
        if (failed < 0) goto done;
    }
    result = PyTuple_Pack(3, lines, names, third);
done:
    Py_XDECREF(lines);
    Py_XDECREF(names);
    Py_XDECREF(third);
    return result;
}

static PyObject *request_fields(PyObject *module, PyObject *block) { return split(block, 1); }

static PyObject *response_fields(PyObject *module, PyObject *block) { return split(block, 0); }

static PyMethodDef methods[] = {
    {"request_fields", request_fields, METH_O, "A request's field block: (lines, names, pairs), or None."},
    {"response_fields", response_fields, METH_O, "A response's field block: (lines, names, values), or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "mcpproxy._http1",
    "The header field splitters of mcpproxy.http1, in C.",
    0,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__http1(void) {
    init_classes();
    return PyModule_Create(&module);
}
