/*
 * shmpool.h - C host adapter for shmpool, layout and protocol version 1.
 *
 * This header is the C rendering of docs/LAYOUT.md (the contract) and of
 * shmpool/layout.py (the Python rendering).  It has two parts:
 *
 *   1. Layout: constants (sizes, field offsets, magics, codes) and byte-level
 *      encode/decode functions for the segment header, the request and the
 *      reply.  Every integer on the wire and in a segment header is
 *      little-endian; the codecs read and write bytes one by one and never
 *      rely on struct layout.
 *
 *   2. Client: segments (POSIX shared memory in /dev/shm) and a connection to
 *      a `python -m shmpool serve` server over a SOCK_SEQPACKET socket.
 *
 * Return-code convention (every int-returning function below unless it says
 * otherwise):
 *
 *      0                 success
 *    < 0                 -errno: an OS or local error (-ENOENT: no server at
 *                        the socket path, -ECONNRESET: the server closed the
 *                        connection, -ETIMEDOUT: no reply in time, -EINVAL: a
 *                        bad argument, -EPROTO: a malformed reply, ...)
 *    > 0                 SHMPOOL_STATUS_*: the server answered with that
 *                        status (e.g. SHMPOOL_STATUS_TOO_SMALL,
 *                        SHMPOOL_STATUS_NON_FINITE); the client's last-error
 *                        accessors hold the server's type/message/traceback.
 *
 * shmpool_strerror() turns any such code into text.
 *
 * Threads: segments and clients are plain objects with no internal locking.
 * A client is one connection and is NOT thread-safe: use one client per
 * thread (several clients give parallelism; the server answers requests on
 * one connection one at a time).  Distinct clients and segments may be used
 * from distinct threads freely.  A segment must not be written (data) or read
 * (result) while a request naming it is outstanding.
 *
 * Usable from C++ (extern "C").  Linux only, little-endian hosts only.
 */
#ifndef SHMPOOL_H
#define SHMPOOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- layout constants (docs/LAYOUT.md, shmpool/layout.py) --------------- */

#define SHMPOOL_VERSION          1

/* Segment header (LAYOUT.md 1.1). */
#define SHMPOOL_SEGMENT_MAGIC    0x504D4853u  /* bytes "SHMP" */
#define SHMPOOL_KIND_DATA        1            /* region holds float64 values */
#define SHMPOOL_KIND_RESULT      2            /* region holds int64 indices */
#define SHMPOOL_HEADER_SIZE      64           /* offset of the region */
#define SHMPOOL_ITEM_SIZE        8            /* bytes per element */

#define SHMPOOL_OFF_MAGIC        0            /* u32 */
#define SHMPOOL_OFF_VERSION      4            /* u16 */
#define SHMPOOL_OFF_KIND         6            /* u16 */
#define SHMPOOL_OFF_HEADER_SIZE  8            /* u32 */
#define SHMPOOL_OFF_FLAGS        12           /* u32 */
#define SHMPOOL_OFF_CAPACITY     16           /* u64 */
#define SHMPOOL_OFF_COUNT        24           /* u64 */
#define SHMPOOL_OFF_STATUS       32           /* u32 */
#define SHMPOOL_OFF_RESERVED1    36           /* u32, 0 */
#define SHMPOOL_OFF_NEEDED       40           /* u64 */
#define SHMPOOL_OFF_RESERVED2    48           /* 16 bytes, 0 */

/* Names (LAYOUT.md 1.3): shmpool-[A-Za-z0-9_-]{1,55}. */
#define SHMPOOL_NAME_SIZE        64           /* name field in a request */
#define SHMPOOL_NAME_PREFIX      "shmpool-"
#define SHMPOOL_NAME_MAX_TAIL    55           /* characters after the prefix */

/* Request (LAYOUT.md 2.1). */
#define SHMPOOL_REQUEST_MAGIC    0x514D4853u  /* bytes "SHMQ" */
#define SHMPOOL_REQUEST_SIZE     176
#define SHMPOOL_REQ_OFF_MAGIC      0          /* u32 */
#define SHMPOOL_REQ_OFF_VERSION    4          /* u16 */
#define SHMPOOL_REQ_OFF_OP         6          /* u16 */
#define SHMPOOL_REQ_OFF_REQUEST_ID 8          /* u64 */
#define SHMPOOL_REQ_OFF_START      16         /* u64 */
#define SHMPOOL_REQ_OFF_COUNT      24         /* u64 */
#define SHMPOOL_REQ_OFF_THRESHOLD  32         /* f64 */
#define SHMPOOL_REQ_OFF_NAN_POLICY 40         /* u32 */
#define SHMPOOL_REQ_OFF_FLAGS      44         /* u32 */
#define SHMPOOL_REQ_OFF_DATA_NAME  48         /* 64 bytes */
#define SHMPOOL_REQ_OFF_OUT_NAME   112        /* 64 bytes */

#define SHMPOOL_OP_DETECT        1
#define SHMPOOL_OP_PING          2

#define SHMPOOL_POLICY_DEFAULT   0            /* the server's default */
#define SHMPOOL_POLICY_PROPAGATE 1            /* numpy arithmetic: no outliers */
#define SHMPOOL_POLICY_OMIT      2            /* non-finite values ignored */
#define SHMPOOL_POLICY_RAISE     3            /* non-finite -> NON_FINITE */

/* Reply (LAYOUT.md 2.2). */
#define SHMPOOL_REPLY_MAGIC      0x524D4853u  /* bytes "SHMR" */
#define SHMPOOL_REPLY_HEAD_SIZE  48
#define SHMPOOL_REP_OFF_MAGIC         0       /* u32 */
#define SHMPOOL_REP_OFF_VERSION       4       /* u16 */
#define SHMPOOL_REP_OFF_STATUS        6       /* u16 */
#define SHMPOOL_REP_OFF_REQUEST_ID    8       /* u64 */
#define SHMPOOL_REP_OFF_COUNT         16      /* u64 */
#define SHMPOOL_REP_OFF_NEEDED        24      /* u64 */
#define SHMPOOL_REP_OFF_TYPE_LEN      32      /* u32 */
#define SHMPOOL_REP_OFF_MESSAGE_LEN   36      /* u32 */
#define SHMPOOL_REP_OFF_TRACEBACK_LEN 40      /* u32 */
#define SHMPOOL_REP_OFF_RESERVED      44      /* u32, 0 */
#define SHMPOOL_MAX_TYPE         256
#define SHMPOOL_MAX_MESSAGE      8192
#define SHMPOOL_MAX_TRACEBACK    32768
#define SHMPOOL_MAX_REPLY        65536        /* a receive buffer this large suffices */

/* Status codes (LAYOUT.md 3), shared by replies and result headers. */
#define SHMPOOL_STATUS_OK             0
#define SHMPOOL_STATUS_BAD_MESSAGE    1
#define SHMPOOL_STATUS_BAD_NAME       2
#define SHMPOOL_STATUS_NO_SEGMENT     3
#define SHMPOOL_STATUS_NOT_PERMITTED  4
#define SHMPOOL_STATUS_BAD_HEADER     5
#define SHMPOOL_STATUS_OUT_OF_RANGE   6
#define SHMPOOL_STATUS_TOO_SMALL      7
#define SHMPOOL_STATUS_DETECTOR_ERROR 8
#define SHMPOOL_STATUS_WORKER_DIED    9
#define SHMPOOL_STATUS_NON_FINITE     10
#define SHMPOOL_STATUS_BAD_VALUE      11
#define SHMPOOL_STATUS_TIMEOUT        12
#define SHMPOOL_STATUS_SHUTTING_DOWN  13
#define SHMPOOL_STATUS_INTERNAL       14
#define SHMPOOL_STATUS_MAX            14      /* highest code defined in v1 */

/* ---- layout codecs ------------------------------------------------------ */

/* Segment header, decoded.  Reserved fields are not represented: encode
 * writes zeros, decode ignores them (as layout.py does). */
typedef struct shmpool_header {
    uint32_t magic;        /* SHMPOOL_SEGMENT_MAGIC */
    uint16_t version;      /* SHMPOOL_VERSION */
    uint16_t kind;         /* SHMPOOL_KIND_DATA or SHMPOOL_KIND_RESULT */
    uint32_t header_size;  /* SHMPOOL_HEADER_SIZE */
    uint32_t flags;        /* 0 */
    uint64_t capacity;
    uint64_t count;
    uint32_t status;
    uint64_t needed;
} shmpool_header;

/* A v1 header of the given kind/capacity/count (status 0, needed 0). */
shmpool_header shmpool_header_make(uint16_t kind, uint64_t capacity, uint64_t count);
void shmpool_header_encode(const shmpool_header *h, unsigned char out[SHMPOOL_HEADER_SIZE]);
void shmpool_header_decode(const unsigned char in[SHMPOOL_HEADER_SIZE], shmpool_header *h);
/* The reader's checks of LAYOUT.md 1.2, in order.  Returns NULL when *h is a
 * sound `kind` segment in a file of `file_size` bytes, else a static string
 * saying which check failed (the server answers BAD_HEADER then). */
const char *shmpool_header_check(const shmpool_header *h, unsigned kind, uint64_t file_size);

/* Request, decoded.  Names are NUL-terminated; a field is one byte longer
 * than the wire field so that a decoded 64-byte name without NUL fits. */
typedef struct shmpool_request {
    uint32_t magic;        /* SHMPOOL_REQUEST_MAGIC */
    uint16_t version;      /* SHMPOOL_VERSION */
    uint16_t op;           /* SHMPOOL_OP_* */
    uint64_t request_id;
    uint64_t start;
    uint64_t count;
    double   threshold;    /* NaN: the server's default */
    uint32_t nan_policy;   /* SHMPOOL_POLICY_* */
    uint32_t flags;        /* 0 */
    char     data_name[SHMPOOL_NAME_SIZE + 1];
    char     out_name[SHMPOOL_NAME_SIZE + 1];
} shmpool_request;

/* A v1 request with the given op: magic/version set, threshold NaN, the rest
 * zero. */
shmpool_request shmpool_request_make(uint16_t op);
/* Encode *r.  Returns 0, or -ENAMETOOLONG when a name has 64 bytes or more
 * (a name field must keep at least one NUL). Does not validate otherwise, so
 * deliberately bad requests can be built. */
int shmpool_request_encode(const shmpool_request *r, unsigned char out[SHMPOOL_REQUEST_SIZE]);
/* Decode and validate one request packet exactly as the server does
 * (LAYOUT.md 2.3; the order of layout.py's unpack_request): size, magic,
 * version, op, flags -> BAD_MESSAGE; nan_policy, threshold -> BAD_VALUE;
 * names (bytes after the NUL, non-ASCII, then for DETECT the naming rule)
 * -> BAD_NAME.  Returns SHMPOOL_STATUS_OK (0) with *r filled, or the status
 * a server answers.  *r is filled as far as decoded (request_id is 0 when the
 * packet was too short or had a bad magic).  `why` (may be NULL) receives a
 * NUL-terminated reason of at most why_size bytes. */
int shmpool_request_decode(const void *buf, size_t len, shmpool_request *r,
                           char *why, size_t why_size);

/* Reply, decoded.  type/message/traceback point into the decoded buffer and
 * are NOT NUL-terminated; use the *_len fields. */
typedef struct shmpool_reply {
    uint32_t magic;        /* SHMPOOL_REPLY_MAGIC */
    uint16_t version;      /* SHMPOOL_VERSION */
    uint16_t status;       /* SHMPOOL_STATUS_* */
    uint64_t request_id;
    uint64_t count;        /* indices written to the result region */
    uint64_t needed;       /* indices in the answer */
    uint32_t type_len, message_len, traceback_len;
    const char *type, *message, *traceback;
} shmpool_reply;

/* Encode *r into out (out_size bytes).  Texts are cut like layout.py does:
 * type and message to their first MAX_TYPE / MAX_MESSAGE bytes, traceback to
 * its last MAX_TRACEBACK bytes (NULL texts count as empty).  Returns the
 * packet length (48 + texts), or -ENOBUFS when out_size is too small. */
long shmpool_reply_encode(const shmpool_reply *r, void *out, size_t out_size);
/* Decode a reply packet of len bytes.  Returns 0, or -EPROTO when it is
 * shorter than 48 bytes, has a bad magic or version, or its text lengths do
 * not add up to its size. */
int shmpool_reply_decode(const void *buf, size_t len, shmpool_reply *r);

/* 1 when name matches shmpool-[A-Za-z0-9_-]{1,55} (the whole string). */
int shmpool_valid_name(const char *name);
/* "OK", "TOO_SMALL", ... ; "UNKNOWN" for codes outside 0..14. */
const char *shmpool_status_name(int status);
/* Text for any return code of this library (0, -errno, SHMPOOL_STATUS_*). */
const char *shmpool_strerror(int code);

/* ---- segments ----------------------------------------------------------- */

/* A shared-memory segment created (or adopted) by this process and mapped
 * read-write.  Creation follows LAYOUT.md 1.4: name
 * shmpool-<pid>-<start>-<16 hex>, open(/dev/shm/<name>,
 * O_RDWR|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0600), posix_fallocate (a full
 * /dev/shm is -ENOSPC now, not SIGBUS later), mmap MAP_SHARED, header. */
typedef struct shmpool_segment shmpool_segment;

/* Create a segment of kind SHMPOOL_KIND_DATA or SHMPOOL_KIND_RESULT with room
 * for `capacity` elements (0 allowed).  A data segment's header count starts
 * at `capacity` (the region is zero-filled, i.e. all valid 0.0); narrow it
 * with shmpool_data_set_count.  A result segment starts with count 0. */
int shmpool_segment_create(unsigned kind, uint64_t capacity, shmpool_segment **out);
int shmpool_data_create(uint64_t capacity, shmpool_segment **out);
int shmpool_result_create(uint64_t capacity, shmpool_segment **out);
/* Unmap and free; does NOT unlink (the name stays in /dev/shm until
 * shmpool_segment_unlink).  NULL-safe. */
void shmpool_segment_close(shmpool_segment *s);
/* Remove the name from /dev/shm; the mapping stays usable until close.
 * Idempotent (0 when already unlinked by this call). */
int shmpool_segment_unlink(shmpool_segment *s);
/* unlink + close.  NULL-safe. */
void shmpool_segment_destroy(shmpool_segment *s);
/* Replace *s by a new segment of the same kind with `capacity` elements; the
 * old one is unlinked and closed on success (untouched on failure).  A data
 * segment keeps min(old, new capacity) values and a count clamped to the new
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
 * header fields the worker wrote for the last answer. */
const int64_t *shmpool_result_indices(const shmpool_segment *s);
uint64_t shmpool_result_count(const shmpool_segment *s);
uint64_t shmpool_result_needed(const shmpool_segment *s);
uint32_t shmpool_result_status(const shmpool_segment *s);

/* ---- client ------------------------------------------------------------- */

typedef struct shmpool_client shmpool_client;

/* Connect to the server at `path`; NULL or "" means $SHMPOOL_SOCKET when set
 * and non-empty, else /tmp/shmpool-<uid>.sock.  The server must run as this
 * process's uid (checked with SO_PEERCRED, else -EPERM).  On failure *out is
 * NULL and the code is negative (-ENOENT / -ECONNREFUSED: no server). */
int shmpool_dial(const char *path, shmpool_client **out);
/* Close the connection, unlink and close the client's internal segments (of
 * shmpool_detect), free.  NULL-safe.  Caller-managed segments are untouched. */
void shmpool_close(shmpool_client *c);

/* Options sent with every DETECT on this client.  threshold: k in
 * |x - mean| > k * std; NaN (the initial value) means the server's default;
 * else finite and >= 0 (-EINVAL otherwise).  nan_policy: SHMPOOL_POLICY_*
 * (initially SHMPOOL_POLICY_DEFAULT; -EINVAL for unknown values). */
int shmpool_set_threshold(shmpool_client *c, double k);
int shmpool_set_nan_policy(shmpool_client *c, uint32_t policy);
/* Reply timeout in milliseconds for each call; <= 0 (the initial value) waits
 * for ever, but a server that dies or closes the connection is always an
 * error (-ECONNRESET), never a hang.  After -ETIMEDOUT the connection is
 * closed (a late reply could otherwise be taken for the next one) and every
 * further call returns -ENOTCONN; dial a new client. */
int shmpool_set_timeout(shmpool_client *c, int timeout_ms);

/* PING: 0 when the server answers OK. */
int shmpool_ping(shmpool_client *c);

/* Copying detect: the outlier indices of x[0:n], ascending, in a malloc'd
 * array (*indices, *count elements) to release with shmpool_free.  *indices
 * may be NULL when *count is 0.  The client copies x into a data segment it
 * owns and reuses across calls (and grows its result segment on TOO_SMALL). */
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
 * indices are shmpool_result_indices(result)[0 : *n_indices].  On
 * SHMPOOL_STATUS_TOO_SMALL nothing was written; *needed says how many slots
 * the answer needs (grow with shmpool_segment_grow and call again).  Either
 * pointer may be NULL.  *needed is set on OK too. */
int shmpool_detect_into(shmpool_client *c, shmpool_segment *data,
                        uint64_t start, uint64_t count, shmpool_segment *result,
                        uint64_t *n_indices, uint64_t *needed);

/* Low level: send *req (its request_id is replaced by the client's next id)
 * and receive the reply into *rep (texts valid until the next call on c).
 * Returns the reply status (>= 0) or a negative errno. */
int shmpool_roundtrip(shmpool_client *c, shmpool_request *req, shmpool_reply *rep);

/* The last call's outcome on this client: status or -errno, and for server
 * errors the reply's error type name, message and remote traceback (for local
 * errors the type is "" and the message describes the failure).  Always
 * NUL-terminated strings, "" when absent; valid until the next call on c. */
int shmpool_last_status(const shmpool_client *c);
const char *shmpool_last_error_type(const shmpool_client *c);
const char *shmpool_last_error_message(const shmpool_client *c);
const char *shmpool_last_error_traceback(const shmpool_client *c);
/* The socket path this client connected to. */
const char *shmpool_client_path(const shmpool_client *c);

#ifdef __cplusplus
}
#endif

#endif /* SHMPOOL_H */
