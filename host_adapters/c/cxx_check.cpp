// Compiled as C++ by the Makefile: shmpool.h must be usable from C++ and the
// library's symbols must link with C linkage.  Runs without a server.
#include "shmpool.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

int main()
{
    unsigned char buf[SHMPOOL_REQUEST_HEAD_SIZE + 16];
    const double values[2] = {1.5, -2.0};
    shmpool_request r = shmpool_request_make(SHMPOOL_OP_COMBINE);
    shmpool_request back;
    shmpool_detector rows[2];
    size_t nrows = 0;
    const char table[] = "classic split 5 threshold=2.0\nmymod:f whole 0";
    shmpool_client *c = nullptr;
    r.count = 1;
    r.nvalues = 2;
    r.values = values;
    long n = shmpool_request_encode(&r, buf, sizeof buf);
    if (n != (long)sizeof buf ||
        shmpool_request_decode(buf, (size_t)n, &back, nullptr, 0) != SHMPOOL_STATUS_OK ||
        back.op != SHMPOOL_OP_COMBINE || shmpool_request_value(&back, 1) != -2.0 ||
        std::strcmp(shmpool_status_name(SHMPOOL_STATUS_BAD_VERSION), "BAD_VERSION") != 0 ||
        shmpool_table_parse(table, sizeof table - 1, rows, 2, &nrows) != 0 || nrows != 2 ||
        !rows[0].split || rows[1].split || shmpool_split_count(1000003, 3) != 3 ||
        shmpool_dial("/nonexistent/shmpool.sock", &c) != -ENOENT || c != nullptr) {
        std::fprintf(stderr, "cxx_check: failed\n");
        return 1;
    }
    shmpool_close(nullptr);
    std::printf("cxx_check: shmpool.h OK from C++\n");
    return 0;
}
