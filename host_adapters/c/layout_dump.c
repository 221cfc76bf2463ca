/*
 * layout_dump: print the layout constants of shmpool.h, one `NAME VALUE` line
 * each, named after shmpool/layout.py (without the SHMPOOL_ prefix; status
 * codes as STATUS_<name of layout.Status>), so a Python test can compare them.
 *
 *   layout_dump          constants that layout.py also defines
 *   layout_dump --all    plus the C-only field offsets (REQ_OFF_*, REP_OFF_*,
 *                        OFF_MAGIC, ...) which layout.py does not name
 */
#include "shmpool.h"

#include <stdio.h>
#include <string.h>

#define P(name) printf("%s %lld\n", #name, (long long)(SHMPOOL_##name))

int main(int argc, char **argv)
{
    int all = argc > 1 && strcmp(argv[1], "--all") == 0;

    if (argc > 1 && !all) {
        fprintf(stderr, "usage: %s [--all]\n", argv[0]);
        return 2;
    }
    P(VERSION);
    P(SEGMENT_MAGIC);
    P(KIND_DATA);
    P(KIND_RESULT);
    P(HEADER_SIZE);
    P(ITEM_SIZE);
    P(OFF_COUNT);
    P(OFF_STATUS);
    P(OFF_NEEDED);
    P(NAME_SIZE);
    printf("NAME_PREFIX %s\n", SHMPOOL_NAME_PREFIX);
    P(REQUEST_MAGIC);
    P(REPLY_MAGIC);
    P(OP_DETECT);
    P(OP_PING);
    P(POLICY_DEFAULT);
    P(POLICY_PROPAGATE);
    P(POLICY_OMIT);
    P(POLICY_RAISE);
    P(REQUEST_SIZE);
    P(REPLY_HEAD_SIZE);
    P(MAX_TYPE);
    P(MAX_MESSAGE);
    P(MAX_TRACEBACK);
    P(MAX_REPLY);
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
    if (all) {
        P(STATUS_MAX);
        P(NAME_MAX_TAIL);
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
        P(REQ_OFF_THRESHOLD);
        P(REQ_OFF_NAN_POLICY);
        P(REQ_OFF_FLAGS);
        P(REQ_OFF_DATA_NAME);
        P(REQ_OFF_OUT_NAME);
        P(REP_OFF_MAGIC);
        P(REP_OFF_VERSION);
        P(REP_OFF_STATUS);
        P(REP_OFF_REQUEST_ID);
        P(REP_OFF_COUNT);
        P(REP_OFF_NEEDED);
        P(REP_OFF_TYPE_LEN);
        P(REP_OFF_MESSAGE_LEN);
        P(REP_OFF_TRACEBACK_LEN);
        P(REP_OFF_RESERVED);
    }
    return 0;
}
