/* The parts of docs/LAYOUT.md (v2) the extension reads and writes.  The
 * contract lives in shmpool/layout.py; tests/test_layout.py compares these
 * numbers with it through _native.layout_constants(). */
#ifndef SHMPOOL_PROTO_H
#define SHMPOOL_PROTO_H

#include <stdint.h>
#include <string.h>

#define P_VERSION 2

/* segment header */
#define P_SEGMENT_MAGIC 0x504D4853u
#define P_KIND_DATA 1
#define P_KIND_RESULT 2
#define P_HEADER_SIZE 64
#define P_OFF_H_MAGIC 0
#define P_OFF_H_VERSION 4
#define P_OFF_H_KIND 6
#define P_OFF_H_HEADER_SIZE 8
#define P_OFF_H_FLAGS 12
#define P_OFF_H_CAPACITY 16
#define P_OFF_COUNT 24
#define P_OFF_STATUS 32
#define P_OFF_NEEDED 40

/* request head */
#define P_REQUEST_MAGIC 0x514D4853u
#define P_REQUEST_HEAD_SIZE 256
#define P_OFF_Q_MAGIC 0
#define P_OFF_Q_VERSION 4
#define P_OFF_Q_OP 6
#define P_OFF_Q_REQUEST_ID 8
#define P_OFF_Q_START 16
#define P_OFF_Q_COUNT 24
#define P_OFF_Q_BASE 32
#define P_OFF_Q_DETECTOR 40
#define P_OFF_Q_NAN_POLICY 44
#define P_OFF_Q_FLAGS 48
#define P_OFF_Q_NPARAMS 52
#define P_OFF_Q_PARAMS 56
#define P_OFF_Q_DATA_NAME 120
#define P_OFF_Q_OUT_NAME 184
#define P_OFF_Q_NVALUES 248
#define P_OFF_Q_RESERVED 252
#define P_NAME_SIZE 64
#define P_MAX_PARAMS 8

/* reply head */
#define P_REPLY_MAGIC 0x524D4853u
#define P_REPLY_HEAD_SIZE 48
#define P_MAX_REPLY 65536

/* ops and codes */
#define P_OP_DETECT 1
#define P_OP_PING 2
#define P_OP_SUMMARIZE 4
#define P_OP_FLAG 6
#define P_POLICY_DEFAULT 0
#define P_POLICY_OMIT 2
#define P_POLICY_RAISE 3
#define P_STATUS_OK 0
#define P_STATUS_TOO_SMALL 7
#define P_STATUS_TIMEOUT 12
#define P_CLASSIC_SUMMARY_SIZE 5

static inline uint16_t rd16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline double rdf64(const unsigned char *p) { double v; memcpy(&v, p, 8); return v; }
static inline void wr16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void wr32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void wr64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void wrf64(unsigned char *p, double v) { memcpy(p, &v, 8); }

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shmpool's layout is little-endian; this host is not"
#endif

#endif
