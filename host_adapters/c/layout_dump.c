/*
 * layout_dump: print the layout constants of shmpool.h, one `NAME VALUE` line
 * each, so that a Python test can compare them with shmpool/layout.py.
 *
 *   layout_dump          the constants layout.py also defines, named as there
 *                        (without the SHMPOOL_ prefix): module attributes such
 *                        as HEADER_SIZE or SPLIT_MIN; op codes as OP_<name of
 *                        layout.Op>; status codes as STATUS_<name of
 *                        layout.Status>
 *   layout_dump --all    plus the C-only ones (field offsets OFF_MAGIC ...,
 *                        REQ_OFF_*, REP_OFF_*, NAME_PREFIX, STATUS_MAX, ...),
 *                        which layout.py does not name
 */
#include "shmpool.h"

#include <stdio.h>
#include <string.h>

#define P(name) printf("%s %lld\n", #name, (long long)(SHMPOOL_##name))
#define S(name) printf("%s %s\n", #name, SHMPOOL_##name)

int main(int argc, char **argv)
{
    int all = argc > 1 && strcmp(argv[1], "--all") == 0;

    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: %s [--all]\n", argv[0]);
        return 0;
    }
    if (argc > 1 && !all) {
        fprintf(stderr, "usage: %s [--all]\n", argv[0]);
        return 2;
    }
    /* segment header (LAYOUT.md 1.1) */
    P(VERSION);
    P(SEGMENT_MAGIC);
    P(KIND_DATA);
    P(KIND_RESULT);
    P(HEADER_SIZE);
    P(ITEM_SIZE);
    P(OFF_COUNT);
    P(OFF_STATUS);
    P(OFF_NEEDED);
    /* names and owners (1.3, 1.4) */
    P(NAME_SIZE);
    S(OWNER_LOCK_SUFFIX);
    /* messages (2.3 - 2.5) */
    P(REQUEST_MAGIC);
    P(REPLY_MAGIC);
    P(OP_DETECT);
    P(OP_PING);
    P(OP_INFO);
    P(OP_SUMMARIZE);
    P(OP_COMBINE);
    P(OP_FLAG);
    P(POLICY_DEFAULT);
    P(POLICY_PROPAGATE);
    P(POLICY_OMIT);
    P(POLICY_RAISE);
    P(MAX_PARAMS);
    P(MAX_REQUEST_VALUES);
    P(MAX_REPLY_VALUES);
    P(MAX_TYPE);
    P(MAX_MESSAGE);
    P(MAX_TRACEBACK);
    P(REQUEST_HEAD_SIZE);
    P(MAX_REQUEST);
    P(REPLY_HEAD_SIZE);
    P(MAX_REPLY);
    P(INFO_VERSION);
    P(INFO_WORKERS);
    P(INFO_WORKER);
    P(INFO_PID);
    P(INFO_NAN_POLICY);
    P(INFO_VALUES);
    P(SUMMARY_N);
    P(SUMMARY_MEAN);
    P(SUMMARY_M2);
    P(SUMMARY_NONFINITE);
    P(SUMMARY_FIRST);
    P(CLASSIC_SUMMARY_SIZE);
    /* splitting (5) */
    P(SPLIT_MIN);
    P(SPLIT_CHUNK_MIN);
    /* status codes (3) */
    P(STATUS_OK);
    P(STATUS_BAD_MESSAGE);
    P(STATUS_BAD_NAME);
    P(STATUS_NO_SEGMENT);
    P(STATUS_NOT_PERMITTED);
    P(STATUS_BAD_HEADER);
    P(STATUS_OUT_OF_RANGE);
    P(STATUS_TOO_SMALL);
    P(STATUS_DETECTOR_ERROR);
    P(STATUS_WORKER_DIED);
    P(STATUS_NON_FINITE);
    P(STATUS_BAD_VALUE);
    P(STATUS_TIMEOUT);
    P(STATUS_SHUTTING_DOWN);
    P(STATUS_INTERNAL);
    P(STATUS_BUSY);
    P(STATUS_BAD_VERSION);
    if (all) {
        P(STATUS_MAX);
        S(NAME_PREFIX);
        P(NAME_MAX_TAIL);
        P(DETECTOR_NAME_MAX);
        P(PARAM_NAME_MAX);
        P(OFF_MAGIC);
        P(OFF_VERSION);
        P(OFF_KIND);
        P(OFF_HEADER_SIZE);
        P(OFF_FLAGS);
        P(OFF_CAPACITY);
        P(OFF_RESERVED1);
        P(OFF_RESERVED2);
        P(REQ_OFF_MAGIC);
        P(REQ_OFF_VERSION);
        P(REQ_OFF_OP);
        P(REQ_OFF_REQUEST_ID);
        P(REQ_OFF_START);
        P(REQ_OFF_COUNT);
        P(REQ_OFF_BASE);
        P(REQ_OFF_DETECTOR);
        P(REQ_OFF_NAN_POLICY);
        P(REQ_OFF_FLAGS);
        P(REQ_OFF_NPARAMS);
        P(REQ_OFF_PARAMS);
        P(REQ_OFF_DATA_NAME);
        P(REQ_OFF_OUT_NAME);
        P(REQ_OFF_NVALUES);
        P(REQ_OFF_RESERVED);
        P(REQ_OFF_VALUES);
        P(REP_OFF_MAGIC);
        P(REP_OFF_VERSION);
        P(REP_OFF_STATUS);
        P(REP_OFF_REQUEST_ID);
        P(REP_OFF_COUNT);
        P(REP_OFF_NEEDED);
        P(REP_OFF_TYPE_LEN);
        P(REP_OFF_MESSAGE_LEN);
        P(REP_OFF_TRACEBACK_LEN);
        P(REP_OFF_NVALUES);
        P(REP_OFF_VALUES);
    }
    return 0;
}
