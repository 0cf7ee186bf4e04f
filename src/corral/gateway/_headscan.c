/* The few header values the gateway reads from a request or response head, in one pass.
 *
 * Theory of operation. proxy._scan does the same with a regex over a lower-cased copy of the
 * head; that pass (and the copy) was a fifth of a proxied request's instructions once the rest
 * of the request path was compiled. This walks the head's lines once, compares each name
 * (case-insensitively, by length first) against a short tuple of lower-case names, and builds
 * the same dict: name -> value with leading spaces/tabs and trailing whitespace removed,
 * repeated headers joined with ", ". Values of the names in the `caseless` bit mask are
 * lower-cased (they are compared without case); the others keep their case. A repeated name
 * in the `single` mask stops the scan and is returned as the third item (the caller answers
 * 400); `cutting` says whether a name in the `cut` mask was seen.
 *
 * It only reads `head` (a bytes object, immutable) within its length; every object it makes
 * is released on every path. The head has already been checked by llhttp (requests) or is an
 * upstream's (responses), and the scan needs nothing more than "lines end with CRLF".
 *
 *   scan(head, names, caseless, single, cut) -> (dict[bytes, bytes], bool, bytes | None)
 *
 * head_end(data) is data.find(b"\r\n\r\n") by memchr: run on every request and response
 * head, the method call, its argument parsing and the generic search were ~1,000 instructions.
 *
 *   head_end(data: bytes) -> int
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static inline unsigned char lower(unsigned char c) {
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

static inline int is_space(unsigned char c) {  /* what bytes.rstrip() strips */
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

/* The CRLF at or after `from`, or `end` when there is none. */
static Py_ssize_t find_crlf(const char *p, Py_ssize_t from, Py_ssize_t end) {
    while (from + 1 < end) {
        const char *cr = memchr(p + from, '\r', (size_t)(end - from - 1));
        if (cr == NULL) {
            return end;
        }
        Py_ssize_t at = cr - p;
        if (p[at + 1] == '\n') {
            return at;
        }
        from = at + 1;
    }
    return end;
}

static PyObject *scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 5 || !PyBytes_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "scan(head: bytes, names: tuple, caseless, single, cut)");
        return NULL;
    }
    unsigned long long caseless = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long single = PyLong_AsUnsignedLongLong(args[3]);
    unsigned long long cut = PyLong_AsUnsignedLongLong(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *names = args[1];
    Py_ssize_t count = PyTuple_GET_SIZE(names);
    if (count > 64) {
        PyErr_SetString(PyExc_ValueError, "at most 64 names");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(names, k))) {
            PyErr_SetString(PyExc_TypeError, "names must be bytes");
            return NULL;
        }
    }
    const char *p = PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    PyObject *values = PyDict_New();
    if (values == NULL) {
        return NULL;
    }
    int cutting = 0;
    PyObject *repeated = Py_None;
    Py_ssize_t line = find_crlf(p, 0, n);  /* past the start line */
    while (line < n) {
        line += 2;
        Py_ssize_t end = find_crlf(p, line, n);
        if (end == line) {
            break;  /* the empty line that ends the head */
        }
        const char *colon = memchr(p + line, ':', (size_t)(end - line));
        if (colon != NULL) {
            Py_ssize_t name_end = colon - p;
            while (name_end > line && (p[name_end - 1] == ' ' || p[name_end - 1] == '\t')) {
                name_end--;
            }
            Py_ssize_t length = name_end - line;
            for (Py_ssize_t k = 0; k < count; k++) {
                PyObject *name = PyTuple_GET_ITEM(names, k);
                if (PyBytes_GET_SIZE(name) != length) {
                    continue;
                }
                const char *want = PyBytes_AS_STRING(name);
                Py_ssize_t i = 0;
                while (i < length && lower((unsigned char)p[line + i]) == (unsigned char)want[i]) {
                    i++;
                }
                if (i != length) {
                    continue;
                }
                unsigned long long bit = 1ULL << k;
                Py_ssize_t start = (colon - p) + 1;
                while (start < end && (p[start] == ' ' || p[start] == '\t')) {
                    start++;
                }
                Py_ssize_t stop = start;
                while (stop < end && p[stop] != '\r' && p[stop] != '\n') {
                    stop++;
                }
                while (stop > start && is_space((unsigned char)p[stop - 1])) {
                    stop--;
                }
                PyObject *value;
                if ((caseless & bit) && stop > start) {
                    /* Lower-cased while copied into an object made empty for it: with a NULL
                     * source CPython never hands out one of its shared one-byte objects, which
                     * must never be written to. */
                    value = PyBytes_FromStringAndSize(NULL, stop - start);
                    if (value != NULL) {
                        char *v = PyBytes_AS_STRING(value);
                        for (Py_ssize_t j = 0; j < stop - start; j++) {
                            v[j] = (char)lower((unsigned char)p[start + j]);
                        }
                    }
                } else {
                    value = PyBytes_FromStringAndSize(p + start, stop - start);
                }
                if (value == NULL) {
                    Py_DECREF(values);
                    return NULL;
                }
                PyObject *old = PyDict_GetItemWithError(values, name);  /* borrowed */
                if (old == NULL && PyErr_Occurred()) {
                    Py_DECREF(value);
                    Py_DECREF(values);
                    return NULL;
                }
                if (old != NULL) {
                    if (single & bit) {
                        Py_DECREF(value);
                        repeated = name;
                        goto done;
                    }
                    Py_ssize_t a = PyBytes_GET_SIZE(old), b = PyBytes_GET_SIZE(value);
                    PyObject *joined = PyBytes_FromStringAndSize(NULL, a + 2 + b);
                    if (joined == NULL) {
                        Py_DECREF(value);
                        Py_DECREF(values);
                        return NULL;
                    }
                    char *j = PyBytes_AS_STRING(joined);
                    memcpy(j, PyBytes_AS_STRING(old), (size_t)a);
                    memcpy(j + a, ", ", 2);
                    memcpy(j + a + 2, PyBytes_AS_STRING(value), (size_t)b);
                    Py_DECREF(value);
                    value = joined;
                }
                int failed = PyDict_SetItem(values, name, value);
                Py_DECREF(value);
                if (failed) {
                    Py_DECREF(values);
                    return NULL;
                }
                if (cut & bit) {
                    cutting = 1;
                }
                break;
            }
        }
        line = end;
    }
done:;
    /* by hand: Py_BuildValue parses its format string on every call (~500 instructions) */
    PyObject *result = PyTuple_New(3);
    if (result == NULL) {
        Py_DECREF(values);
        return NULL;
    }
    PyObject *flag = cutting ? Py_True : Py_False;
    Py_INCREF(flag);
    Py_INCREF(repeated);
    PyTuple_SET_ITEM(result, 0, values);
    PyTuple_SET_ITEM(result, 1, flag);
    PyTuple_SET_ITEM(result, 2, repeated);
    return result;
}

static PyObject *head_end(PyObject *module, PyObject *data) {
    (void)module;
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "head_end(data: bytes)");
        return NULL;
    }
    /* memchr for each CR (vectorised) rather than memmem, whose generic two-way search
     * cost more than bytes.find on a 600-byte head */
    const char *start = PyBytes_AS_STRING(data);
    const char *end = start + PyBytes_GET_SIZE(data);
    const char *p = start;
    while (end - p >= 4) {
        const char *cr = memchr(p, '\r', (size_t)(end - p - 3));
        if (cr == NULL) {
            break;
        }
        if (cr[1] == '\n' && cr[2] == '\r' && cr[3] == '\n') {
            return PyLong_FromSsize_t(cr - start);
        }
        p = cr + 1;
    }
    return PyLong_FromSsize_t(-1);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(head, names, caseless, single, cut) -> (values, cutting, repeated name or None)"},
    {"head_end", (PyCFunction)head_end, METH_O,
     "head_end(data) -> index of the first CRLF CRLF, or -1 (data.find(b'\\r\\n\\r\\n'))"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_headscan", "The gateway's header scan, compiled.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__headscan(void) {
    return PyModule_Create(&module);
}
