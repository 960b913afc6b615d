/* The rest of a chunked answer, relayed from one socket to another by a blocking loop that holds
 * no lock of the interpreter: mcpproxy/_pump.py's relay, in C.
 *
 * relay(upstream, caller, cancel, idle_ms) -> (outcome, relayed, tail, leftover)
 *     Reads the upstream socket and writes what it reads to the caller socket, as it is, until
 *     the chunked body it carries ends; the body is taken up at a chunk boundary. Returns how
 *     it stopped (ENDED, UPSTREAM_CLOSED, CALLER_GONE, TIMEOUT, CANCELLED, MALFORMED), the
 *     bytes written to the caller, and, once ENDED, the body's last bytes, not written (the read
 *     that holds the body's end), and the bytes read past the end (empty when the upstream
 *     connection may carry another exchange). It stops:
 *       - ENDED: the read that holds the last chunk and the trailer section is in; its body
 *         bytes are left for the event loop to write, so that a caller answered in full finds
 *         its connection read by the loop again (its next request is not left waiting while
 *         this thread hands the connection back);
 *       - UPSTREAM_CLOSED: the upstream closed or reset before the end;
 *       - CALLER_GONE: the caller closed (or half-closed) its side, or a write to it failed;
 *       - TIMEOUT: nothing came from the upstream for idle_ms (a negative idle_ms: no limit),
 *         counted only while the caller keeps up, as the event loop's relay counts it;
 *       - CANCELLED: the `cancel` descriptor became readable (an eventfd the loop writes to);
 *       - MALFORMED: the body's chunked framing is broken (nothing of the bad read is written).
 *     Any other failure of poll raises OSError.
 *
 * Why: on the event loop, each streamed event costs the interpreter's and the loop's machinery
 * on top of the kernel's wake-up, read and write (bench/PROFILE.md). Here an event costs a poll,
 * a recv and a send. The chunked framing is checked as tightly as mcpproxy.http1.ChunkScanner
 * checks it; tests/test_pump.py runs both this and the twin over the same streams.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

enum { ENDED, UPSTREAM_CLOSED, CALLER_GONE, TIMEOUT, CANCELLED, MALFORMED };
enum { SIZE_LINE, DATA, DATA_CRLF, TRAILER, DONE };

#define MAX_LINE 4096
#define READ_SIZE 65536

/* Where the chunked framing is: the state, the bytes left of a chunk's data or of its CRLF, and
 * a size or trailer line split across reads. */
typedef struct {
    int state;
    unsigned long long remaining;
    size_t line_len;
    char line[MAX_LINE];
} Scan;

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A whole size or trailer line, its trailing CRs already stripped: 0, or -1 when malformed. */
static int end_line(Scan *s, const char *p, size_t n) {
    if (n > MAX_LINE) return -1;
    if (s->state == TRAILER) {
        if (n == 0) s->state = DONE;
        return 0;
    }
    const char *semicolon = memchr(p, ';', n);
    size_t stop = semicolon ? (size_t)(semicolon - p) : n, start = 0;
    while (start < stop && (p[start] == ' ' || p[start] == '\t')) start++;
    while (stop > start && (p[stop - 1] == ' ' || p[stop - 1] == '\t')) stop--;
    if (stop == start || stop - start > 15) return -1;
    unsigned long long size = 0;
    for (size_t i = start; i < stop; i++) {
        int digit = hex_value(p[i]);
        if (digit < 0) return -1;
        size = size * 16 + (unsigned long long)digit;
    }
    if (size == 0) {
        s->state = TRAILER;
    } else {
        s->state = DATA;
        s->remaining = size;
    }
    return 0;
}

/* One size or trailer line, or the part of it in data[pos:end]: the new position, or -1. */
static ssize_t line_step(Scan *s, const char *data, size_t pos, size_t end) {
    const char *newline = memchr(data + pos, '\n', end - pos);
    if (newline == NULL) {
        size_t part = end - pos;
        if (s->line_len + part > MAX_LINE) return -1;
        memcpy(s->line + s->line_len, data + pos, part);
        s->line_len += part;
        return (ssize_t)end;
    }
    size_t stop = (size_t)(newline - data), part = stop - pos;
    while (part > 0 && data[pos + part - 1] == '\r') part--;
    int ok;
    if (s->line_len == 0) {
        ok = end_line(s, data + pos, part);
    } else {
        if (part == 0)
            while (s->line_len > 0 && s->line[s->line_len - 1] == '\r') s->line_len--;
        if (s->line_len + part > MAX_LINE) return -1;
        memcpy(s->line + s->line_len, data + pos, part);
        size_t n = s->line_len + part;
        s->line_len = 0;
        ok = end_line(s, s->line, n);
    }
    return ok < 0 ? -1 : (ssize_t)(stop + 1);
}

/* How many bytes of data[0:end] belong to the body (all of them until it ends), or -1. */
static ssize_t scan(Scan *s, const char *data, size_t end) {
    size_t pos = 0;
    while (pos < end && s->state != DONE) {
        if (s->state == DATA || s->state == DATA_CRLF) {
            size_t take = end - pos;
            if (take > s->remaining) take = (size_t)s->remaining;
            if (s->state == DATA_CRLF && memcmp(data + pos, "\r\n" + (2 - s->remaining), take) != 0)
                return -1;
            s->remaining -= take;
            pos += take;
            if (s->remaining == 0) {
                s->remaining = s->state == DATA ? 2 : 0;
                s->state = s->state == DATA ? DATA_CRLF : SIZE_LINE;
            }
        } else {
            ssize_t next = line_step(s, data, pos, end);
            if (next < 0) return -1;
            pos = (size_t)next;
        }
    }
    return (ssize_t)pos;
}

typedef struct {
    int outcome;
    int error;  /* errno of a failed poll, else 0 */
    long long relayed;
    size_t tail_len;
    char *leftover;
    size_t leftover_len;
} Result;

static long long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

/* Write buf[*off:*off+*len] to the caller as far as it takes it now: 0, or -1 when it is gone. */
static int send_some(int caller, const char *buf, size_t *off, size_t *len, long long *relayed) {
    while (*len > 0) {
        ssize_t n = send(caller, buf + *off, *len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        *off += (size_t)n;
        *len -= (size_t)n;
        *relayed += n;
    }
    return 0;
}

/* The loop (run without the interpreter's lock): fills `r`. */
static void run(Result *r, char *buf, int upstream, int caller, int cancel, int idle_ms) {
    Scan s = {SIZE_LINE, 0, 0, {0}};
    size_t off = 0, len = 0, got = 0, used = 0;
    long long idle_us = (long long)idle_ms * 1000;
    long long deadline = idle_ms < 0 ? -1 : now_us() + idle_us;
    for (;;) {
        struct pollfd fds[3] = {
            {cancel, POLLIN, 0},
            {caller, POLLRDHUP | (len ? POLLOUT : 0), 0},
            {len ? -1 : upstream, POLLIN, 0},  /* the caller catches up before more is read */
        };
        int timeout = -1;
        if (!len && deadline >= 0) {
            long long left = deadline - now_us();
            timeout = left <= 0 ? 0 : (int)((left + 999) / 1000);  /* never wakes before it */
        }
        int ready = poll(fds, 3, timeout);
        if (ready < 0) {
            if (errno == EINTR) continue;
            r->error = errno;
            return;
        }
        if (ready == 0) {
            r->outcome = TIMEOUT;
            return;
        }
        if (fds[0].revents) {
            r->outcome = CANCELLED;
            return;
        }
        if (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
            r->outcome = CALLER_GONE;
            return;
        }
        if (len) {
            if (send_some(caller, buf, &off, &len, &r->relayed) < 0) {
                r->outcome = CALLER_GONE;
                return;
            }
            if (!len && deadline >= 0) deadline = now_us() + idle_us;
        } else if (fds[2].revents) {
            ssize_t n = recv(upstream, buf, READ_SIZE, MSG_DONTWAIT);
            if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
            if (n <= 0) {
                r->outcome = UPSTREAM_CLOSED;
                return;
            }
            got = (size_t)n;
            ssize_t body = scan(&s, buf, got);
            if (body < 0) {
                r->outcome = MALFORMED;
                return;
            }
            used = (size_t)body;
            if (s.state == DONE) {
                r->outcome = ENDED;
                r->tail_len = used;
                r->leftover = buf + used;
                r->leftover_len = got - used;
                return;
            }
            off = 0;
            len = used;
            if (deadline >= 0) deadline = now_us() + idle_us;
            if (send_some(caller, buf, &off, &len, &r->relayed) < 0) {
                r->outcome = CALLER_GONE;
                return;
            }
        }
    }
}

static PyObject *relay(PyObject *module, PyObject *args) {
    int upstream, caller, cancel, idle_ms;
    if (!PyArg_ParseTuple(args, "iiii:relay", &upstream, &caller, &cancel, &idle_ms)) return NULL;
    char *buf = PyMem_RawMalloc(READ_SIZE);
    if (buf == NULL) return PyErr_NoMemory();
    Result r = {0, 0, 0, 0, buf, 0};
    Py_BEGIN_ALLOW_THREADS
    run(&r, buf, upstream, caller, cancel, idle_ms);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (r.error) {
        errno = r.error;
        PyErr_SetFromErrno(PyExc_OSError);
    } else {
        result = Py_BuildValue("(iLy#y#)", r.outcome, r.relayed, buf, (Py_ssize_t)r.tail_len, r.leftover,
                               (Py_ssize_t)r.leftover_len);
    }
    PyMem_RawFree(buf);
    return result;
}

static PyMethodDef methods[] = {
    {"relay", relay, METH_VARARGS,
     "relay(upstream, caller, cancel, idle_ms) -> (outcome, relayed, tail, leftover): the rest of a "
     "chunked answer, from the upstream socket to the caller's, off the event loop."},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module) {
    static const struct { const char *name; int value; } outcomes[] = {
        {"ENDED", ENDED}, {"UPSTREAM_CLOSED", UPSTREAM_CLOSED}, {"CALLER_GONE", CALLER_GONE},
        {"TIMEOUT", TIMEOUT}, {"CANCELLED", CANCELLED}, {"MALFORMED", MALFORMED},
    };
    for (size_t i = 0; i < sizeof(outcomes) / sizeof(outcomes[0]); i++)
        if (PyModule_AddIntConstant(module, outcomes[i].name, outcomes[i].value) < 0) return -1;
    return 0;
}

static PyModuleDef_Slot slots[] = {{Py_mod_exec, exec_module}, {0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "mcpproxy._pump",
    "The rest of a chunked answer relayed off the event loop (see mcpproxy/_pump.py).",
    0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pump(void) { return PyModuleDef_Init(&module_def); }
