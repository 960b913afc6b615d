/* The access line of mcpproxy/logs.py, in C: mcpproxy/_access.py's access_line.
 *
 * access_line(route, method, path, mcp_method, status, bytes, duration_ms, request_id, via,
 *             upstream_ms, credential_source, subject_fingerprint, sub, error, detail,
 *             second, micros) -> str
 *     One JSON object of the fields in this order and its newline, as the Python twin writes
 *     it: the optional ones (from upstream_ms) left out when None or empty, mcp_method written
 *     as null when None; every text a str (TypeError otherwise: a Secret cannot be written),
 *     escaped as json.dumps escapes it with ASCII output; status and bytes in decimal;
 *     durations in milliseconds with three decimals, from the value in thousandths rounded
 *     half up (a negative one as "%.3f" writes it); the timestamp as second (as it is: ASCII,
 *     ValueError otherwise, as the line is built as ASCII), ".", micros in six digits (0 to
 *     999999, ValueError otherwise) and "Z".
 *
 * The access line is the one log line every request writes; the twin builds a dozen strings
 * (a formatted number, a quoted text) and joins them, this writes the line once into a buffer.
 * tests/test_units.py checks it against the twin on generated fields.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* The line as it is written: in `stack` while it fits, else in memory from PyMem. */
typedef struct {
    char *p;
    Py_ssize_t len, cap;
    char stack[1024];
} Out;

static int reserve(Out *o, Py_ssize_t more) {
    if (o->len + more <= o->cap) return 0;
    Py_ssize_t cap = (o->len + more) * 2;
    char *p = o->p == o->stack ? PyMem_Malloc((size_t)cap) : PyMem_Realloc(o->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (o->p == o->stack) memcpy(p, o->stack, (size_t)o->len);
    o->p = p;
    o->cap = cap;
    return 0;
}

static int put(Out *o, const char *s, Py_ssize_t n) {
    if (reserve(o, n) < 0) return -1;
    memcpy(o->p + o->len, s, (size_t)n);
    o->len += n;
    return 0;
}

#define PUT_LITERAL(o, s) put((o), (s), (Py_ssize_t)(sizeof(s) - 1))

static const char hex_digits[] = "0123456789abcdef";

/* The bytes a JSON string holds as they are: printable ASCII but '"' and '\\' (one table lookup
 * a byte, where four comparisons were). */
static unsigned char plain[256];

static void put_u_escape(Out *o, Py_UCS4 c) {
    char *w = o->p + o->len;
    w[0] = '\\', w[1] = 'u', w[2] = hex_digits[(c >> 12) & 15], w[3] = hex_digits[(c >> 8) & 15];
    w[4] = hex_digits[(c >> 4) & 15], w[5] = hex_digits[c & 15];
    o->len += 6;
}

/* text as a JSON string literal, as json.encoder.encode_basestring_ascii writes it. */
static int put_json_str(Out *o, PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "an access line field must be a str");
        return -1;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (reserve(o, 12 * n + 2) < 0) return -1; /* at most a surrogate pair's 12 a character */
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    o->p[o->len++] = '"';
    Py_ssize_t i = 0;
    if (kind == PyUnicode_1BYTE_KIND) { /* the common text: a run that needs no escape, copied */
        const unsigned char *bytes = data;
        while (i < n && plain[bytes[i]]) i++;
        memcpy(o->p + o->len, bytes, (size_t)i);
        o->len += i;
    }
    for (; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        const char *short_escape = NULL;
        switch (c) {
        case '"': short_escape = "\\\""; break;
        case '\\': short_escape = "\\\\"; break;
        case '\n': short_escape = "\\n"; break;
        case '\r': short_escape = "\\r"; break;
        case '\t': short_escape = "\\t"; break;
        case '\b': short_escape = "\\b"; break;
        case '\f': short_escape = "\\f"; break;
        }
        if (short_escape != NULL) {
            o->p[o->len++] = short_escape[0];
            o->p[o->len++] = short_escape[1];
        } else if (c >= 0x20 && c <= 0x7e) {
            o->p[o->len++] = (char)c;
        } else if (c >= 0x10000) {
            Py_UCS4 v = c - 0x10000;
            put_u_escape(o, 0xd800 | (v >> 10));
            put_u_escape(o, 0xdc00 | (v & 0x3ff));
        } else {
            put_u_escape(o, c);
        }
    }
    o->p[o->len++] = '"';
    return 0;
}

/* An ASCII str as it is (the timestamp's second). */
static int put_ascii(Out *o, PyObject *text) {
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) {
        PyErr_SetString(PyExc_ValueError, "the access line's second must be an ASCII str");
        return -1;
    }
    return put(o, (const char *)PyUnicode_1BYTE_DATA(text), PyUnicode_GET_LENGTH(text));
}

/* A str of digits (an int's text) as it is. */
static int put_text_of(Out *o, PyObject *number) {
    PyObject *text = PyObject_Str(number);
    int failed = text == NULL || put_ascii(o, text) < 0;
    Py_XDECREF(text);
    return failed ? -1 : 0;
}

/* v in decimal (snprintf's format parsing cost more than the digits). */
static int put_decimal(Out *o, unsigned long long v, int min_digits) {
    char digits[24];
    int n = 0;
    do {
        digits[sizeof digits - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0 || n < min_digits);
    return put(o, digits + sizeof digits - n, n);
}

static int put_int(Out *o, PyObject *number) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(number, &overflow);
    if (v == -1 && !overflow && PyErr_Occurred()) return -1;
    if (overflow || v < 0) return put_text_of(o, number); /* not a count: int's own text */
    return put_decimal(o, (unsigned long long)v, 1);
}

/* "." and the timestamp's microseconds in six digits. */
static int put_micros(Out *o, PyObject *micros) {
    long v = PyLong_AsLong(micros);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0 || v > 999999) {
        PyErr_SetString(PyExc_ValueError, "the access line's micros must be 0 to 999999");
        return -1;
    }
    return put(o, ".", 1) < 0 ? -1 : put_decimal(o, (unsigned long long)v, 6);
}

/* Milliseconds with three decimals (see the module comment). */
static int put_millis(Out *o, PyObject *value) {
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred()) return -1;
    if (v < 0) {
        char *text = PyOS_double_to_string(v, 'f', 3, 0, NULL);
        if (text == NULL) return -1;
        int failed = put(o, text, (Py_ssize_t)strlen(text));
        PyMem_Free(text);
        return failed;
    }
    double thousandths = v * 1000 + 0.5;
    if (thousandths < 9.0e18) {
        unsigned long long t = (unsigned long long)thousandths;
        return put_decimal(o, t / 1000, 1) < 0 || put(o, ".", 1) < 0 || put_decimal(o, t % 1000, 3) < 0 ? -1 : 0;
    }
    /* past a long long (or not finite: int() raises as the twin's does) */
    PyObject *whole = PyLong_FromDouble(thousandths);
    if (whole == NULL) return -1;
    PyObject *thousand = PyLong_FromLong(1000);
    PyObject *parts = thousand != NULL ? PyNumber_Divmod(whole, thousand) : NULL;
    Py_DECREF(whole);
    Py_XDECREF(thousand);
    if (parts == NULL) return -1;
    long rest = PyLong_AsLong(PyTuple_GET_ITEM(parts, 1)); /* 0 to 999 */
    int failed = put_text_of(o, PyTuple_GET_ITEM(parts, 0)) < 0 || put(o, ".", 1) < 0 ||
                 put_decimal(o, (unsigned long long)rest, 3) < 0;
    Py_DECREF(parts);
    return failed ? -1 : 0;
}

/* An optional text field, its key (",\"name\":") and literal, unless None or empty. */
static int put_optional(Out *o, const char *key, PyObject *text) {
    if (text == Py_None || (PyUnicode_Check(text) && PyUnicode_GET_LENGTH(text) == 0)) return 0;
    return put(o, key, (Py_ssize_t)strlen(key)) < 0 || put_json_str(o, text) < 0 ? -1 : 0;
}

static int put_line(Out *o, PyObject *const *a) {
    return PUT_LITERAL(o, "{\"route\":") < 0 || put_json_str(o, a[0]) < 0 ||
                   PUT_LITERAL(o, ",\"method\":") < 0 || put_json_str(o, a[1]) < 0 ||
                   PUT_LITERAL(o, ",\"path\":") < 0 || put_json_str(o, a[2]) < 0 ||
                   PUT_LITERAL(o, ",\"mcp_method\":") < 0 ||
                   (a[3] == Py_None ? PUT_LITERAL(o, "null") : put_json_str(o, a[3])) < 0 ||
                   PUT_LITERAL(o, ",\"status\":") < 0 || put_int(o, a[4]) < 0 ||
                   PUT_LITERAL(o, ",\"bytes\":") < 0 || put_int(o, a[5]) < 0 ||
                   PUT_LITERAL(o, ",\"duration_ms\":") < 0 || put_millis(o, a[6]) < 0 ||
                   PUT_LITERAL(o, ",\"request_id\":") < 0 || put_json_str(o, a[7]) < 0 ||
                   PUT_LITERAL(o, ",\"via\":") < 0 || put_json_str(o, a[8]) < 0 ||
                   (a[9] != Py_None && (PUT_LITERAL(o, ",\"upstream_ms\":") < 0 || put_millis(o, a[9]) < 0)) ||
                   put_optional(o, ",\"credential_source\":", a[10]) < 0 ||
                   put_optional(o, ",\"subject_fingerprint\":", a[11]) < 0 ||
                   put_optional(o, ",\"sub\":", a[12]) < 0 || put_optional(o, ",\"error\":", a[13]) < 0 ||
                   put_optional(o, ",\"detail\":", a[14]) < 0 ||
                   PUT_LITERAL(o, ",\"event\":\"request\",\"level\":\"info\",\"timestamp\":\"") < 0 ||
                   put_ascii(o, a[15]) < 0 || put_micros(o, a[16]) < 0 || PUT_LITERAL(o, "Z\"}\n") < 0
               ? -1
               : 0;
}

static PyObject *access_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 17) {
        PyErr_Format(PyExc_TypeError, "access_line() takes 17 arguments (%zd given)", nargs);
        return NULL;
    }
    Out o;
    o.p = o.stack;
    o.len = 0;
    o.cap = (Py_ssize_t)sizeof o.stack;
    PyObject *line = put_line(&o, args) < 0 ? NULL : PyUnicode_New(o.len, 127);
    if (line != NULL) memcpy(PyUnicode_1BYTE_DATA(line), o.p, (size_t)o.len);
    if (o.p != o.stack) PyMem_Free(o.p);
    return line;
}

static PyMethodDef methods[] = {
    {"access_line", (PyCFunction)(void (*)(void))access_line, METH_FASTCALL,
     "One access line (see mcpproxy/_access.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "mcpproxy._access",
    "The access line of mcpproxy.logs, in C (see mcpproxy/_access.py).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__access(void) {
    for (int c = 0x20; c < 0x7f; c++) plain[c] = c != '"' && c != '\\';
    return PyModule_Create(&module);
}
