/*
 * shmpool.h - C host adapter for shmpool, layout and protocol version 2.
 *
 * This header is the C rendering of docs/LAYOUT.md (the contract) and of
 * shmpool/layout.py (the Python rendering); section numbers below ("1.4",
 * "2.6", ...) are LAYOUT.md's.  It has three parts:
 *
 *   1. Layout: constants (sizes, field offsets, magics, codes) and byte-level
 *      codecs for the segment header, the request (256-byte head + float64
 *      values), the reply (48-byte head + float64 values + text) and the
 *      detector table that INFO returns.  Every integer on the wire and in a
 *      segment header is little-endian; the codecs read and write bytes one
 *      by one and never rely on struct layout.
 *
 *   2. Segments: POSIX shared memory in /dev/shm, named and created per 1.3
 *      and 1.5, vouched for by this process's owner lock file (1.4).
 *
 *   3. Client: connections ("lanes") to the workers of a `shmpool serve`
 *      server over SOCK_SEQPACKET (2.1).  A call on a `split` detector row of
 *      262,144 values or more is split over up to `workers` lanes (section 5).
 *
 * Return-code convention (every int-returning function below unless it says
 * otherwise):
 *
 *      0                 success
 *    < 0                 -errno: an OS or local error.  -ENOENT /
 *                        -ECONNREFUSED: no server at the socket path;
 *                        -ETIMEDOUT: no reply within the client's timeout;
 *                        -EPROTO: a malformed or mismatched reply; -EPERM:
 *                        the server runs under another uid; -EINVAL: a bad
 *                        argument; -ENOSPC: /dev/shm is full; -EPIPE: the
 *                        request could not be sent (nothing ran) ...
 *    > 0                 SHMPOOL_STATUS_*: a worker answered with that status
 *                        (e.g. SHMPOOL_STATUS_TOO_SMALL, _NON_FINITE, _BUSY),
 *                        or SHMPOOL_STATUS_WORKER_DIED, the host's own verdict
 *                        when a connection ends while a reply is awaited
 *                        (2.8).  The client's last-error accessors hold the
 *                        type/message/traceback.
 *
 * shmpool_strerror() turns any such code into text.
 *
 * Threads:
 *   - The codecs and shmpool_valid_name/status_name/strerror are pure and
 *     thread-safe.
 *   - Segment creation, unlinking and destruction are thread-safe (they share
 *     this process's owner lock under an internal mutex).  A segment object
 *     itself is not locked: do not grow or destroy a segment while another
 *     thread uses it, and do not write a data segment's region or read a
 *     result segment's region while a call naming it is running (1.5).
 *   - A client is NOT thread-safe: use one client per thread, or serialize
 *     whole calls yourself.  Distinct clients may be used from distinct
 *     threads freely.  (A single client already drives several workers in
 *     parallel through its lanes.)
 *   - fork(): a child may create segments and dial clients of its own; it
 *     takes a new owner lock (1.3, 1.4) at its first segment.  A client or
 *     segment inherited from the parent must not be used by both processes.
 *
 * Usable from C++ (extern "C").  Linux only, little-endian hosts only.  Link
 * with -pthread on glibc older than 2.34.
 */
#ifndef SHMPOOL_H
#define SHMPOOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ======================================================================= */
/* 1. Layout constants (LAYOUT.md; names as in shmpool/layout.py)           */
/* ======================================================================= */

#define SHMPOOL_VERSION            2            /* layout/protocol version spoken */

/* -- Segment header (1.1): 64 bytes, then the region --------------------- */
#define SHMPOOL_SEGMENT_MAGIC      0x504D4853u  /* the bytes "SHMP" as a LE u32 */
#define SHMPOOL_KIND_DATA          1            /* region holds float64 values */
#define SHMPOOL_KIND_RESULT        2            /* region holds int64 indices */
#define SHMPOOL_HEADER_SIZE        64           /* bytes before the region; also its alignment */
#define SHMPOOL_ITEM_SIZE          8            /* bytes per element, float64 and int64 alike */

#define SHMPOOL_OFF_MAGIC          0   /* u32 magic        SHMPOOL_SEGMENT_MAGIC */
#define SHMPOOL_OFF_VERSION        4   /* u16 version      SHMPOOL_VERSION */
#define SHMPOOL_OFF_KIND           6   /* u16 kind         KIND_DATA or KIND_RESULT */
#define SHMPOOL_OFF_HEADER_SIZE    8   /* u32 header_size  HEADER_SIZE: offset of the region */
#define SHMPOOL_OFF_FLAGS          12  /* u32 flags        0; a reader rejects anything else */
#define SHMPOOL_OFF_CAPACITY       16  /* u64 capacity     elements the region holds, fixed at creation */
#define SHMPOOL_OFF_COUNT          24  /* u64 count        data: elements valid; result: indices written */
#define SHMPOOL_OFF_STATUS         32  /* u32 status       result: status of the last answer; data: 0 */
#define SHMPOOL_OFF_RESERVED1      36  /* u32 reserved     0 */
#define SHMPOOL_OFF_NEEDED         40  /* u64 needed       result: indices of the last answer
                                        *                  (> capacity on TOO_SMALL); data: 0 */
#define SHMPOOL_OFF_RESERVED2      48  /* 16 bytes         zero */

/* -- Names (1.3) and owners (1.4) ---------------------------------------- */
#define SHMPOOL_NAME_SIZE          64           /* bytes of a name field, NUL-padded */
#define SHMPOOL_NAME_PREFIX        "shmpool-"   /* a name is shmpool-[A-Za-z0-9_-]{1,55} */
#define SHMPOOL_NAME_MAX_TAIL      55           /* characters after the prefix */
#define SHMPOOL_OWNER_LOCK_SUFFIX  "owner"      /* /dev/shm/shmpool-<owner>-owner */

/* -- Request (2.3): 256-byte head + nvalues float64 ----------------------- */
#define SHMPOOL_REQUEST_MAGIC      0x514D4853u  /* the bytes "SHMQ" */
#define SHMPOOL_REQUEST_HEAD_SIZE  256
#define SHMPOOL_MAX_PARAMS         8            /* float64 parameter slots in a request */
#define SHMPOOL_MAX_REQUEST_VALUES 8192         /* float64 values after a head (COMBINE only) */
#define SHMPOOL_MAX_REQUEST        (SHMPOOL_REQUEST_HEAD_SIZE + 8 * SHMPOOL_MAX_REQUEST_VALUES)

#define SHMPOOL_REQ_OFF_MAGIC      0   /* u32 magic       REQUEST_MAGIC */
#define SHMPOOL_REQ_OFF_VERSION    4   /* u16 version     VERSION */
#define SHMPOOL_REQ_OFF_OP         6   /* u16 op          SHMPOOL_OP_* */
#define SHMPOOL_REQ_OFF_REQUEST_ID 8   /* u64 request_id  chosen by the host, echoed in the reply */
#define SHMPOOL_REQ_OFF_START      16  /* u64 start       first element of the data region to read */
#define SHMPOOL_REQ_OFF_COUNT      24  /* u64 count       elements to read (COMBINE: summaries in values) */
#define SHMPOOL_REQ_OFF_BASE       32  /* u64 base        added to every index written (FLAG: chunk start) */
#define SHMPOOL_REQ_OFF_DETECTOR   40  /* u32 detector    row of the detector table; 0 = default */
#define SHMPOOL_REQ_OFF_NAN_POLICY 44  /* u32 nan_policy  SHMPOOL_POLICY_* */
#define SHMPOOL_REQ_OFF_FLAGS      48  /* u32 flags       0 */
#define SHMPOOL_REQ_OFF_NPARAMS    52  /* u32 nparams     entries of params that are set, 0..8 */
#define SHMPOOL_REQ_OFF_PARAMS     56  /* 8 x f64 params  detector parameters (NaN/unset = default);
                                        *                 FLAG: the flag parameters COMBINE returned */
#define SHMPOOL_REQ_OFF_DATA_NAME  120 /* 64 bytes        data segment name, NUL-padded */
#define SHMPOOL_REQ_OFF_OUT_NAME   184 /* 64 bytes        result segment name, NUL-padded */
#define SHMPOOL_REQ_OFF_NVALUES    248 /* u32 nvalues     f64 values after the head (COMBINE only) */
#define SHMPOOL_REQ_OFF_RESERVED   252 /* u32 reserved    0 */
#define SHMPOOL_REQ_OFF_VALUES     256 /* nvalues x f64   COMBINE: count summaries back to back */

/* Operations (2.5). */
#define SHMPOOL_OP_DETECT          1   /* the whole detector over data[start:start+count] into out */
#define SHMPOOL_OP_PING            2   /* nothing; answered OK */
#define SHMPOOL_OP_INFO            3   /* the worker's facts (values) and detector table (message) */
#define SHMPOOL_OP_SUMMARIZE       4   /* phase 1 of a split call: one chunk's summary (reply values) */
#define SHMPOOL_OP_COMBINE         5   /* the chunks' summaries (request values) -> flag parameters */
#define SHMPOOL_OP_FLAG            6   /* phase 2: one chunk's indices + base into out */

/* nan_policy codes (2.3, 4.2). */
#define SHMPOOL_POLICY_DEFAULT     0   /* the worker's default (INFO says which) */
#define SHMPOOL_POLICY_PROPAGATE   1   /* numpy's arithmetic: any NaN/inf -> no outliers */
#define SHMPOOL_POLICY_OMIT        2   /* non-finite values ignored, never reported */
#define SHMPOOL_POLICY_RAISE       3   /* any non-finite value -> NON_FINITE */

/* -- Reply (2.4): 48-byte head + nvalues float64 + type + message + traceback */
#define SHMPOOL_REPLY_MAGIC        0x524D4853u  /* the bytes "SHMR" */
#define SHMPOOL_REPLY_HEAD_SIZE    48
#define SHMPOOL_MAX_REPLY_VALUES   64           /* float64 values after a reply head */
#define SHMPOOL_MAX_TYPE           256          /* bytes of the error type name */
#define SHMPOOL_MAX_MESSAGE        8192         /* bytes of the message */
#define SHMPOOL_MAX_TRACEBACK      32768        /* bytes of the remote traceback */
#define SHMPOOL_MAX_REPLY          65536        /* a receive buffer this large always suffices */

#define SHMPOOL_REP_OFF_MAGIC         0   /* u32 magic          REPLY_MAGIC */
#define SHMPOOL_REP_OFF_VERSION       4   /* u16 version        VERSION */
#define SHMPOOL_REP_OFF_STATUS        6   /* u16 status         SHMPOOL_STATUS_*, 0 = OK */
#define SHMPOOL_REP_OFF_REQUEST_ID    8   /* u64 request_id     from the request (0 if unreadable, 2.2) */
#define SHMPOOL_REP_OFF_COUNT         16  /* u64 count          indices written to the result region */
#define SHMPOOL_REP_OFF_NEEDED        24  /* u64 needed         indices in the answer (TOO_SMALL: > capacity) */
#define SHMPOOL_REP_OFF_TYPE_LEN      32  /* u32 type_len       bytes of the error type name */
#define SHMPOOL_REP_OFF_MESSAGE_LEN   36  /* u32 message_len    bytes of the message after the type */
#define SHMPOOL_REP_OFF_TRACEBACK_LEN 40  /* u32 traceback_len  bytes of the traceback after the message */
#define SHMPOOL_REP_OFF_NVALUES       44  /* u32 nvalues        f64 values between the head and the text */
#define SHMPOOL_REP_OFF_VALUES        48  /* nvalues x f64      SUMMARIZE: summary; COMBINE: flag
                                           *                    parameters; INFO: SHMPOOL_INFO_* */

/* INFO reply values, by position (2.5). */
#define SHMPOOL_INFO_VERSION       0   /* SHMPOOL_VERSION */
#define SHMPOOL_INFO_WORKERS       1   /* workers the server (or pool) runs */
#define SHMPOOL_INFO_WORKER        2   /* this worker's index, 0 .. workers-1 */
#define SHMPOOL_INFO_PID           3   /* this worker's process id (in its own PID namespace) */
#define SHMPOOL_INFO_NAN_POLICY    4   /* the default nan_policy, a SHMPOOL_POLICY_* code */
#define SHMPOOL_INFO_VALUES        5   /* values an INFO reply holds */

/* The classic detector's summary (SUMMARIZE reply values), by position (4.1). */
#define SHMPOOL_SUMMARY_N          0   /* finite values counted */
#define SHMPOOL_SUMMARY_MEAN       1   /* their mean */
#define SHMPOOL_SUMMARY_M2         2   /* sum of squared deviations from that mean */
#define SHMPOOL_SUMMARY_NONFINITE  3   /* NaN and inf values seen */
#define SHMPOOL_SUMMARY_FIRST      4   /* index (+ base) of the first of them, or -1 */
#define SHMPOOL_CLASSIC_SUMMARY_SIZE 5

/* Splitting a call (5). */
#define SHMPOOL_SPLIT_MIN          (1 << 18)    /* a split-capable call of fewer values runs whole */
#define SHMPOOL_SPLIT_CHUNK_MIN    (1 << 17)    /* no chunk is planned smaller than this */

/* Status codes (3), shared by replies and result-segment headers. */
#define SHMPOOL_STATUS_OK             0   /* success */
#define SHMPOOL_STATUS_BAD_MESSAGE    1   /* wrong size, magic, op, flags, nparams or nvalues */
#define SHMPOOL_STATUS_BAD_NAME       2   /* a segment name breaks the naming rule */
#define SHMPOOL_STATUS_NO_SEGMENT     3   /* no such segment (never created, or unlinked) */
#define SHMPOOL_STATUS_NOT_PERMITTED  4   /* other owner, mode wider than 0600, not a regular
                                           * file; or a host of another uid */
#define SHMPOOL_STATUS_BAD_HEADER     5   /* header magic/version/kind/size wrong, or capacity > file */
#define SHMPOOL_STATUS_OUT_OF_RANGE   6   /* start + count beyond the data segment's count */
#define SHMPOOL_STATUS_TOO_SMALL      7   /* result capacity < needed; count 0, region unspecified */
#define SHMPOOL_STATUS_DETECTOR_ERROR 8   /* the detector raised; type, message, traceback follow */
#define SHMPOOL_STATUS_WORKER_DIED    9   /* the worker died during the call (host's verdict) */
#define SHMPOOL_STATUS_NON_FINITE     10  /* NaN/inf under nan_policy raise, or overflowing statistics */
#define SHMPOOL_STATUS_BAD_VALUE      11  /* a parameter, nan_policy, detector row or values count */
#define SHMPOOL_STATUS_TIMEOUT        12  /* the call exceeded the server's --timeout */
#define SHMPOOL_STATUS_SHUTTING_DOWN  13  /* the server is stopping */
#define SHMPOOL_STATUS_INTERNAL       14  /* a bug in shmpool; the message says where */
#define SHMPOOL_STATUS_BUSY           15  /* the server holds as many connections as it can */
#define SHMPOOL_STATUS_BAD_VERSION    16  /* the request's version is not 2 */
#define SHMPOOL_STATUS_MAX            16  /* highest code defined in v2 */

/* ======================================================================= */
/* 1'. Layout codecs                                                        */
/* ======================================================================= */

/* Segment header, decoded.  Reserved fields are not represented: encode
 * writes zeros, decode ignores them (as layout.py does). */
typedef struct shmpool_header {
    uint32_t magic;        /* SHMPOOL_SEGMENT_MAGIC */
    uint16_t version;      /* SHMPOOL_VERSION */
    uint16_t kind;         /* SHMPOOL_KIND_DATA or SHMPOOL_KIND_RESULT */
    uint32_t header_size;  /* SHMPOOL_HEADER_SIZE */
    uint32_t flags;        /* 0 */
    uint64_t capacity;     /* elements the region holds */
    uint64_t count;        /* data: elements valid; result: indices written */
    uint32_t status;       /* result: status of the last answer */
    uint64_t needed;       /* result: indices in the last answer */
} shmpool_header;

/* A v2 header of the given kind/capacity/count (status 0, needed 0). */
shmpool_header shmpool_header_make(uint16_t kind, uint64_t capacity, uint64_t count);
void shmpool_header_encode(const shmpool_header *h, unsigned char out[SHMPOOL_HEADER_SIZE]);
void shmpool_header_decode(const unsigned char in[SHMPOOL_HEADER_SIZE], shmpool_header *h);
/* The reader's checks of 1.2, in order.  Returns NULL when *h is a sound
 * `kind` segment in a file of `file_size` bytes, else a static string saying
 * which check failed (a worker answers BAD_HEADER then). */
const char *shmpool_header_check(const shmpool_header *h, unsigned kind, uint64_t file_size);

/* Request, decoded or to encode.  Names are NUL-terminated C strings; a name
 * member is one byte longer than the wire field so that a decoded 64-byte
 * name without NUL still fits. */
typedef struct shmpool_request {
    uint32_t magic;        /* SHMPOOL_REQUEST_MAGIC */
    uint16_t version;      /* SHMPOOL_VERSION */
    uint16_t op;           /* SHMPOOL_OP_* */
    uint64_t request_id;   /* echoed in the reply */
    uint64_t start;        /* first element of the data region */
    uint64_t count;        /* elements (COMBINE: summaries in values) */
    uint64_t base;         /* added to every index written */
    uint32_t detector;     /* row of the detector table */
    uint32_t nan_policy;   /* SHMPOOL_POLICY_* */
    uint32_t flags;        /* 0 */
    uint32_t nparams;      /* params[0:nparams] are set; encode writes NaN in the rest */
    double   params[SHMPOOL_MAX_PARAMS];
    char     data_name[SHMPOOL_NAME_SIZE + 1];
    char     out_name[SHMPOOL_NAME_SIZE + 1];
    uint32_t nvalues;      /* float64 values after the head */
    uint32_t reserved;     /* 0 */
    /* Encode: the nvalues values to append (host doubles).  Decode: NULL. */
    const double *values;
    /* Decode: the nvalues little-endian f64 inside the decoded packet (read
     * them with shmpool_request_value).  Encode: ignored. */
    const unsigned char *values_wire;
} shmpool_request;

/* A v2 request with the given op: magic and version set, params all NaN,
 * everything else zero/empty. */
shmpool_request shmpool_request_make(uint16_t op);
/* Bytes the encoded packet takes: 256 + 8 * nvalues. */
size_t shmpool_request_size(const shmpool_request *r);
/* Encode *r into out (out_size bytes).  Returns the packet length, or
 * -ENAMETOOLONG when a name has 64 bytes or more (a field keeps at least one
 * NUL), -ENOBUFS when out_size is too small, -EINVAL when nvalues > 0 and
 * values is NULL.  Does not validate otherwise (nparams, op, flags, ... are
 * written as given), so deliberately bad requests can be built. */
long shmpool_request_encode(const shmpool_request *r, void *out, size_t out_size);
/* Decode and check one request packet as a worker does, steps 1-5 of 2.6 in
 * layout.py's order (the detector row and parameter values, steps 6-7, need
 * the worker's table and are not checked): magic -> BAD_MESSAGE; version ->
 * BAD_VERSION; size, op, flags/reserved, nparams, nvalues -> BAD_MESSAGE;
 * nan_policy -> BAD_VALUE; both name fields (bytes after the NUL, ASCII),
 * then the naming rule for the names the op uses -> BAD_NAME.  Returns
 * SHMPOOL_STATUS_OK (0) with *r filled, or the status a worker answers; *r is
 * filled as far as decoded (request_id is 0 when the packet is too short or
 * its magic is wrong).  `why` (may be NULL) receives a NUL-terminated reason
 * of at most why_size bytes.  After OK, r->values_wire points into buf. */
int shmpool_request_decode(const void *buf, size_t len, shmpool_request *r,
                           char *why, size_t why_size);
/* Value i (< r->nvalues) of a decoded request; of an encodable one (values
 * set) as well. */
double shmpool_request_value(const shmpool_request *r, size_t i);

/* Reply, decoded or to encode.  type/message/traceback are NOT
 * NUL-terminated: use the *_len fields.  After decode they point into the
 * decoded buffer. */
typedef struct shmpool_reply {
    uint32_t magic;        /* SHMPOOL_REPLY_MAGIC */
    uint16_t version;      /* SHMPOOL_VERSION */
    uint16_t status;       /* SHMPOOL_STATUS_* */
    uint64_t request_id;
    uint64_t count;        /* indices written to the result region */
    uint64_t needed;       /* indices in the answer */
    uint32_t type_len, message_len, traceback_len;
    uint32_t nvalues;      /* values[0:nvalues] are valid */
    double   values[SHMPOOL_MAX_REPLY_VALUES];
    const char *type, *message, *traceback;
} shmpool_reply;

/* Encode *r into out (out_size bytes).  Cut like layout.py: at most
 * MAX_REPLY_VALUES values, type and message to their first MAX_TYPE /
 * MAX_MESSAGE bytes, the traceback to its last MAX_TRACEBACK bytes (NULL
 * texts count as empty).  Returns the packet length (48 + 8 * nvalues +
 * texts), or -ENOBUFS when out_size is too small. */
long shmpool_reply_encode(const shmpool_reply *r, void *out, size_t out_size);
/* Decode a reply packet of len bytes.  Returns 0; -EPROTO when it is shorter
 * than 48 bytes, has a bad magic, more than MAX_REPLY_VALUES values, or
 * lengths that do not add up to its size; -EPROTONOSUPPORT when its version
 * is not 2 (then magic, version, status and request_id, laid out alike in
 * every version, are filled in: a BAD_VERSION reply of another version is
 * still recognisable). */
int shmpool_reply_decode(const void *buf, size_t len, shmpool_reply *r);

/* One row of a server's detector table (2.5): what a host may ask for. */
#define SHMPOOL_DETECTOR_NAME_MAX  255  /* longest row name kept (C-only limit) */
#define SHMPOOL_PARAM_NAME_MAX     63   /* longest parameter name kept (C-only limit) */
typedef struct shmpool_detector {
    char     name[SHMPOOL_DETECTOR_NAME_MAX + 1];  /* "classic", "pkg.mod:fn" */
    int      split;          /* 1: DETECT, SUMMARIZE, COMBINE, FLAG; 0: DETECT only */
    uint32_t summary_size;   /* f64 values of one SUMMARIZE reply (0 when whole) */
    uint32_t nparams;        /* parameters, in request order (<= MAX_PARAMS) */
    char     param_names[SHMPOOL_MAX_PARAMS][SHMPOOL_PARAM_NAME_MAX + 1];
    double   param_defaults[SHMPOOL_MAX_PARAMS];
} shmpool_detector;

/* Parse an INFO message (len bytes, need not be NUL-terminated): lines
 * `<name> <split|whole> <summary_size> [<param>=<default> ...]`, row 0 first
 * (layout.py parse_table; blank lines are skipped).  Fills rows[0:max_rows]
 * and sets *n_rows to the number of rows in the text (may exceed max_rows;
 * rows may be NULL when max_rows is 0).  Returns 0, -EPROTO for a malformed
 * line, -ENAMETOOLONG for a name over the C limits, -E2BIG for more than
 * MAX_PARAMS parameters or a summary_size over MAX_REPLY_VALUES. */
int shmpool_table_parse(const char *text, size_t len, shmpool_detector *rows, size_t max_rows,
                        size_t *n_rows);

/* Splitting (5).  split_count: chunks for n values over `lanes` connections
 * (1 if n < SPLIT_MIN, else max(1, min(lanes, n / SPLIT_CHUNK_MIN))).
 * split_bound: where chunk i of k starts, floor(floor(n * i / k) / 8) * 8 for
 * i < k, and n for i == k (exact for any n, k > 0). */
uint64_t shmpool_split_count(uint64_t n, uint64_t lanes);
uint64_t shmpool_split_bound(uint64_t n, uint64_t k, uint64_t i);

/* 1 when name matches shmpool-[A-Za-z0-9_-]{1,55} (the whole string). */
int shmpool_valid_name(const char *name);
/* "OK", "TOO_SMALL", ... ; "UNKNOWN" for codes outside 0..SHMPOOL_STATUS_MAX. */
const char *shmpool_status_name(int status);
/* Text for any return code of this library (0, -errno, SHMPOOL_STATUS_*). */
const char *shmpool_strerror(int code);

/* ======================================================================= */
/* 2. Segments                                                              */
/* ======================================================================= */

/* A shared-memory segment created by this process and mapped read-write.
 * Creation follows 1.3-1.5: first this process's owner lock (below), then the
 * name shmpool-<owner>-<16 random hex>, open(/dev/shm/<name>,
 * O_RDWR|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0600) (and fchmod 0600 against a
 * restrictive umask), posix_fallocate (a full /dev/shm is -ENOSPC now, not
 * SIGBUS later), mmap MAP_SHARED, header written. */
typedef struct shmpool_segment shmpool_segment;

/* Create a segment of kind SHMPOOL_KIND_DATA or SHMPOOL_KIND_RESULT with room
 * for `capacity` elements (0 allowed).  A data segment's header count starts
 * at `capacity` (the region is zero-filled, i.e. all valid 0.0); narrow it
 * with shmpool_data_set_count.  A result segment starts with count 0. */
int shmpool_segment_create(unsigned kind, uint64_t capacity, shmpool_segment **out);
int shmpool_data_create(uint64_t capacity, shmpool_segment **out);
int shmpool_result_create(uint64_t capacity, shmpool_segment **out);
/* Unmap and free; does NOT unlink (the name stays in /dev/shm until
 * shmpool_segment_unlink, or this process's clean exit).  NULL-safe. */
void shmpool_segment_close(shmpool_segment *s);
/* Remove the name from /dev/shm; the mapping stays usable until close.
 * Idempotent.  Only the creating process unlinks: in a forked child this
 * returns -EPERM and leaves the parent's segment alone. */
int shmpool_segment_unlink(shmpool_segment *s);
/* unlink + close.  NULL-safe. */
void shmpool_segment_destroy(shmpool_segment *s);
/* Replace *s by a new segment of the same kind with `capacity` elements; the
 * old one is destroyed on success (untouched on failure).  A data segment
 * keeps min(old, new capacity) values and a count clamped to the new
 * capacity. */
int shmpool_segment_grow(shmpool_segment **s, uint64_t capacity);

const char *shmpool_segment_name(const shmpool_segment *s);  /* no leading '/' */
unsigned shmpool_segment_kind(const shmpool_segment *s);
uint64_t shmpool_segment_capacity(const shmpool_segment *s);
/* Start of the mapping (the 64-byte header); for tests and tools. */
void *shmpool_segment_base(shmpool_segment *s);

/* Data segments: the float64 region to write values into (64-byte aligned;
 * NULL for a result segment), and the header count (elements valid). */
double *shmpool_data_values(shmpool_segment *s);
int shmpool_data_set_count(shmpool_segment *s, uint64_t count);  /* -EINVAL if > capacity */
uint64_t shmpool_data_count(const shmpool_segment *s);

/* Result segments: the int64 region (NULL for a data segment), and the
 * header fields the worker (or a split call, 5.6) wrote for the last answer. */
const int64_t *shmpool_result_indices(const shmpool_segment *s);
uint64_t shmpool_result_count(const shmpool_segment *s);
uint64_t shmpool_result_needed(const shmpool_segment *s);
uint32_t shmpool_result_status(const shmpool_segment *s);

/* This process's owner (1.3, 1.4): copies "<pid>-<8 hex>" into buf (at least
 * 20 bytes), first taking the owner lock when this process holds none: it
 * creates /dev/shm/shmpool-<owner>-owner (O_RDWR|O_CREAT|O_EXCL|O_NOFOLLOW|
 * O_CLOEXEC, 0600, empty), takes flock(LOCK_SH), keeps the descriptor open
 * and checks (stat vs fstat) that the path still names the file it locked,
 * starting over with a new owner if not.  Segment creation does this
 * implicitly.  After fork() the child gets an owner of its own at its first
 * segment (the inherited descriptor is closed in the child; the parent keeps
 * its lock).  Returns 0 or -errno. */
int shmpool_owner_id(char *buf, size_t size);
/* This process is done with shmpool segments: unlink every segment it
 * created and has not unlinked yet (their mappings stay valid until
 * shmpool_segment_close), then its owner file, and close the lock.  The next
 * segment creation takes a new owner.  Runs automatically at exit() (atexit)
 * once a segment has been created.  Thread-safe, idempotent. */
void shmpool_cleanup(void);

/* ======================================================================= */
/* 3. Client                                                                */
/* ======================================================================= */

/* A client holds one or more connections ("lanes") to one server.  Lane 0 is
 * opened by shmpool_dial; lanes 1.. are dialed lazily when a call is split,
 * up to the server's worker count (INFO).  Every lane, when connected, checks
 * the server's uid (SO_PEERCRED: -EPERM for another uid) and sends INFO; the
 * server hands each connection of this process to a different worker while
 * it has unused ones (2.1), and the lane remembers which (shmpool_lane_worker).
 *
 * Failures: a reply not received within the timeout closes that lane
 * (-ETIMEDOUT; a late reply could otherwise be taken for the next one); a
 * lane whose connection ends while a reply is awaited is closed and the call
 * fails with SHMPOOL_STATUS_WORKER_DIED (2.8); a lane whose worker answered
 * TIMEOUT (it exits) or SHUTTING_DOWN (it closes) is closed after that reply.
 * A reply for another request_id is -EPROTO (lane closed), except request_id
 * 0 with BUSY, NOT_PERMITTED, BAD_VERSION or BAD_MESSAGE, which is the answer
 * to the outstanding request (2.1, 2.2).  A closed lane is dialed again by
 * the next call that needs it.  A request that finds its idle lane closed
 * by the worker (EPIPE or hang-up before sending: the worker was replaced or
 * the server stopped) reconnects once and is sent again; if the server is
 * gone that reconnect fails promptly (-ENOENT, -ECONNREFUSED).  Any error in
 * any lane fails the whole call; a call never returns part of an answer. */
typedef struct shmpool_client shmpool_client;

/* Facts a worker reports (INFO, 2.5). */
typedef struct shmpool_server_info {
    uint32_t version;      /* INFO values[SHMPOOL_INFO_VERSION]: 2 */
    uint32_t workers;      /* workers the server runs */
    uint32_t worker;       /* the answering worker's index */
    int64_t  pid;          /* its process id */
    uint32_t nan_policy;   /* its default nan_policy (SHMPOOL_POLICY_*) */
    size_t   n_detectors;  /* rows of its detector table */
} shmpool_server_info;

/* The socket path a NULL/"" path means: $SHMPOOL_SOCKET when set and
 * non-empty, else /tmp/shmpool-<uid>.sock.  Returns 0 or -ENAMETOOLONG. */
int shmpool_socket_path(char *buf, size_t size);

/* Connect lane 0 to the server at `path` (NULL or "": shmpool_socket_path),
 * check its uid and ask INFO.  connect() failing with EAGAIN (a full backlog)
 * is retried with backoff for up to 10 s.  On failure *out is NULL and the
 * code is negative (-ENOENT / -ECONNREFUSED: no server) or a status the
 * server refused the connection with (SHMPOOL_STATUS_BUSY, _NOT_PERMITTED,
 * _BAD_VERSION). */
int shmpool_dial(const char *path, shmpool_client **out);
/* shmpool_dial with a deadline for the connect retries and the INFO reply,
 * and that timeout set on the client (shmpool_set_timeout; <= 0: 10 s for
 * connecting, no limit for replies). */
int shmpool_dial_timeout(const char *path, int timeout_ms, shmpool_client **out);
/* Close every lane, destroy the client's internal segments, free.
 * NULL-safe.  Caller-managed segments are untouched. */
void shmpool_close(shmpool_client *c);

/* -- Options, sent with every call of this client ------------------------- */

/* The detector row by name (NULL or "": row 0, the server's default).
 * -EINVAL when the table has no such row.  Parameters already set whose name
 * the new row also has keep their values; the others are dropped. */
int shmpool_set_detector(shmpool_client *c, const char *name);
/* A parameter of the current row by name; NaN means the row's default (the
 * initial state of every parameter).  -EINVAL when the row has no such
 * parameter.  Values are checked by the worker (BAD_VALUE). */
int shmpool_set_param(shmpool_client *c, const char *name, double value);
/* The value set for a parameter (NaN when unset or unknown). */
double shmpool_get_param(const shmpool_client *c, const char *name);
/* set_param(c, "threshold", k), checked locally as in v1: NaN (the row's
 * default) or finite and >= 0, else -EINVAL; -EINVAL too when the current
 * row has no `threshold`. */
int shmpool_set_threshold(shmpool_client *c, double k);
/* SHMPOOL_POLICY_* (initially SHMPOOL_POLICY_DEFAULT); -EINVAL otherwise. */
int shmpool_set_nan_policy(shmpool_client *c, uint32_t policy);
/* Reply timeout in milliseconds for each exchange (for a split call, each
 * phase); <= 0 (the initial value) waits for ever, but a worker that dies or
 * a server that stops is always an error, never a hang.  Also the deadline of
 * connect() retries when dialing lanes (10 s when <= 0). */
int shmpool_set_timeout(shmpool_client *c, int timeout_ms);
/* At most max_lanes connections per call (0, the initial value: the server's
 * worker count; 1: never split).  A split call uses
 * L = min(max_lanes, workers) in the rule of 5.1, so the answer depends only
 * on n and L. */
int shmpool_set_lanes(shmpool_client *c, unsigned max_lanes);

/* -- Facts ----------------------------------------------------------------- */

/* Ask INFO on lane 0 now; refreshes the client's copy of the detector table.
 * *out may be NULL. */
int shmpool_info(shmpool_client *c, shmpool_server_info *out);
/* The detector table as of the last INFO (valid until the next call on c). */
size_t shmpool_detector_count(const shmpool_client *c);
const shmpool_detector *shmpool_detector_at(const shmpool_client *c, size_t row);
/* The row the client's calls use (shmpool_set_detector). */
size_t shmpool_detector_row(const shmpool_client *c);
/* The server's worker count (last INFO). */
unsigned shmpool_workers(const shmpool_client *c);
/* Dial lanes 0 .. n-1 now (n is capped at the worker count); 0 or an error. */
int shmpool_open_lanes(shmpool_client *c, unsigned n);
/* Lanes the client has slots for (>= 1), and the worker index / process id a
 * connected lane's INFO reported (-1 when lane i is not connected). */
unsigned shmpool_lane_count(const shmpool_client *c);
int shmpool_lane_worker(const shmpool_client *c, unsigned lane);
int64_t shmpool_lane_pid(const shmpool_client *c, unsigned lane);
/* Chunks the last detect call used (1: whole on lane 0; 0 before any). */
unsigned shmpool_last_chunks(const shmpool_client *c);

/* -- Calls ----------------------------------------------------------------- */

/* PING on lane 0: 0 when the worker answers OK. */
int shmpool_ping(shmpool_client *c);

/* Copying detect: the outlier indices of x[0:n], ascending, in a malloc'd
 * array (*indices, *count elements) to release with shmpool_free.  *indices
 * is NULL when *count is 0.  The client copies x into a data segment it owns
 * and reuses across calls (and grows its result segments on TOO_SMALL). */
int shmpool_detect(shmpool_client *c, const double *x, size_t n,
                   int64_t **indices, size_t *count);
void shmpool_free(void *p);

/* Zero-copy detect over data[start : start+count] of a caller's data segment
 * (start + count <= its header count), with the indices (relative to start)
 * copied into a malloc'd array as for shmpool_detect. */
int shmpool_detect_segment(shmpool_client *c, shmpool_segment *data,
                           uint64_t start, uint64_t count,
                           int64_t **indices, size_t *n_indices);

/* Zero-copy detect into a caller-managed result segment.  On 0 (OK) the
 * indices (relative to start) are shmpool_result_indices(result)[0 :
 * *n_indices].  On SHMPOOL_STATUS_TOO_SMALL no index is valid; *needed says
 * how many slots the answer needs (grow with shmpool_segment_grow and call
 * again).  Either pointer may be NULL; *needed is set on OK too.  A whole
 * call is written by the worker itself; a split call (5) is assembled from
 * the lanes' own result segments into `result`, whose header this function
 * then writes as a worker would (count, status, needed; 2.7). */
int shmpool_detect_into(shmpool_client *c, shmpool_segment *data,
                        uint64_t start, uint64_t count, shmpool_segment *result,
                        uint64_t *n_indices, uint64_t *needed);

/* Low level: send *req on lane 0 (lane `lane` for the _lane form; its
 * request_id is replaced by the client's next id) and receive the reply into
 * *rep (texts valid until the next call on c).  Returns the reply status
 * (>= 0) or a negative errno. */
int shmpool_roundtrip(shmpool_client *c, shmpool_request *req, shmpool_reply *rep);
int shmpool_roundtrip_lane(shmpool_client *c, unsigned lane, shmpool_request *req,
                           shmpool_reply *rep);

/* The last call's outcome on this client: status or -errno, and for worker
 * errors the reply's error type name, message and remote traceback (for
 * local errors the type is "" and the message describes the failure).
 * Always NUL-terminated strings, "" when absent; valid until the next call
 * on c. */
int shmpool_last_status(const shmpool_client *c);
const char *shmpool_last_error_type(const shmpool_client *c);
const char *shmpool_last_error_message(const shmpool_client *c);
const char *shmpool_last_error_traceback(const shmpool_client *c);
/* The socket path this client connects to. */
const char *shmpool_client_path(const shmpool_client *c);

#ifdef __cplusplus
}
#endif

#endif /* SHMPOOL_H */
