/*
 * example: the classic shmpool demo.  1,000 uniform [0,1) values with +97
 * added at 7, 113 and 835; the server's default detector finds exactly those.
 *
 *   build/example [SOCKET]     (default: $SHMPOOL_SOCKET, else
 *                               /tmp/shmpool-<uid>.sock)
 * prints: [7 113 835]
 */
#include "shmpool.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static void usage(FILE *f, const char *argv0)
{
    fprintf(f,
            "usage: %s [SOCKET]\n"
            "Runs the shmpool demo (1,000 values, outliers at 7, 113 and 835) on the\n"
            "server at SOCKET (default: $SHMPOOL_SOCKET, else /tmp/shmpool-<uid>.sock)\n"
            "and prints the indices it finds: [7 113 835]\n",
            argv0);
}

int main(int argc, char **argv)
{
    enum { N = 1000 };
    static double x[N];
    uint64_t state = 0x9E3779B97F4A7C15ull; /* xorshift64* */
    char path[256];
    shmpool_client *client;
    int64_t *idx;
    size_t n, i;
    int err;

    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout, argv[0]);
        return 0;
    }
    if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
        usage(stderr, argv[0]);
        return 2;
    }
    if (argc == 2) {
        snprintf(path, sizeof path, "%s", argv[1]);
    } else if (shmpool_socket_path(path, sizeof path) != 0) {
        fprintf(stderr, "example: $SHMPOOL_SOCKET is too long\n");
        return 1;
    }

    for (i = 0; i < N; i++) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        x[i] = (double)((state * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
    }
    x[7] += 97;
    x[113] += 97;
    x[835] += 97;

    err = shmpool_dial(path, &client);
    if (err != 0) {
        fprintf(stderr, "example: cannot connect to %s: %s\n", path, shmpool_strerror(err));
        return 1;
    }
    err = shmpool_detect(client, x, N, &idx, &n);
    if (err != 0) {
        fprintf(stderr, "example: detect failed: %s\n  %s: %s\n", shmpool_strerror(err),
                shmpool_last_error_type(client), shmpool_last_error_message(client));
        shmpool_close(client);
        return 1;
    }
    printf("[");
    for (i = 0; i < n; i++)
        printf(i ? " %" PRId64 : "%" PRId64, idx[i]);
    printf("]\n");
    shmpool_free(idx);
    shmpool_close(client);
    return 0;
}
