// Compiled as C++ by the Makefile: shmpool.h must be usable from C++ and the
// library's symbols must link with C linkage.  Runs without a server.
#include "shmpool.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

int main()
{
    unsigned char buf[SHMPOOL_REQUEST_SIZE];
    shmpool_request r = shmpool_request_make(SHMPOOL_OP_PING);
    shmpool_request back;
    shmpool_client *c = nullptr;
    if (shmpool_request_encode(&r, buf) != 0 ||
        shmpool_request_decode(buf, sizeof buf, &back, nullptr, 0) != SHMPOOL_STATUS_OK ||
        back.op != SHMPOOL_OP_PING ||
        std::strcmp(shmpool_status_name(SHMPOOL_STATUS_TOO_SMALL), "TOO_SMALL") != 0 ||
        shmpool_dial("/nonexistent/shmpool.sock", &c) != -ENOENT || c != nullptr) {
        std::fprintf(stderr, "cxx_check: failed\n");
        return 1;
    }
    shmpool_close(nullptr);
    std::printf("cxx_check: shmpool.h OK from C++\n");
    return 0;
}
