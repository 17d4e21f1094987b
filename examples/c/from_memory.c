/*
 * from_memory.c: the firmware-style use of libtinydiffusion. The program owns every byte: it
 * reads config.json, the safetensors weights and (if present) scheduler_config.json into its
 * own buffers (on a board: flash or a linked-in array), builds the model from memory with
 * td_model_from_memory (the library touches no file system), sizes one workspace for a stated
 * thread count (the same size on every machine, so it could be a static arena), samples, and
 * prints a checksum of x_0.
 *
 *   cargo build --release -p tinydiffusion-capi
 *   gcc -std=c99 -Wall -Wextra -pedantic -Werror -O2 -I include examples/c/from_memory.c \
 *       target/release/libtinydiffusion.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o from_memory
 *   ./from_memory weights [THREADS] [BATCH] [STEPS]
 *
 * THREADS (default 1) is td_sampler_desc.threads: the workspace is sized for it and the run
 * uses at most that many threads. BATCH defaults to 2, STEPS (DDIM) to 10.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinydiffusion.h"

static int report(const char *what, td_status status) {
    char detail[512];
    td_last_error_message(detail, sizeof detail, NULL);
    fprintf(stderr, "%s: %s: %s\n", what, td_status_message(status), detail);
    return 1;
}

/* Reads dir/name into a malloc'd buffer (malloc's alignment suits the weights: f16 tensors
 * are used in place and need a 2-byte aligned buffer). NULL if the file cannot be read. */
static char *read_file(const char *dir, const char *name, size_t *len) {
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path) {
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    char *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc(size > 0 ? (size_t)size : 1);
        if (buf != NULL && fread(buf, 1, (size_t)size, f) != (size_t)size) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    *len = buf != NULL ? (size_t)size : 0;
    return buf;
}

static size_t parse_size(const char *s, size_t fallback) {
    char *end = NULL;
    unsigned long v = strtoul(s, &end, 10);
    return (end == s || *end != '\0' || s[0] == '-') ? fallback : (size_t)v;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 5) {
        fprintf(stderr, "usage: %s MODEL_DIR [THREADS] [BATCH] [STEPS]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    size_t threads = argc > 2 ? parse_size(argv[2], 1) : 1;
    size_t batch = argc > 3 ? parse_size(argv[3], 2) : 2;
    size_t steps = argc > 4 ? parse_size(argv[4], 10) : 10;

    size_t weights_len = 0, config_len = 0, scheduler_len = 0;
    char *weights = read_file(dir, "diffusion_pytorch_model.safetensors", &weights_len);
    char *config = read_file(dir, "config.json", &config_len);
    char *scheduler = read_file(dir, "scheduler_config.json", &scheduler_len); /* optional */
    if (weights == NULL || config == NULL) {
        fprintf(stderr, "%s: cannot read config.json and diffusion_pytorch_model.safetensors\n",
                dir);
        free(weights), free(config), free(scheduler);
        return 1;
    }

    td_model *model = NULL;
    /* The weights are borrowed, not copied: keep them until td_model_free. The JSON texts are
     * only read during the call. */
    td_status st = td_model_from_memory((const uint8_t *)weights, weights_len, config, config_len,
                                        scheduler, scheduler_len, &model);
    free(config), free(scheduler);
    if (st != TD_STATUS_OK) {
        free(weights);
        return report("td_model_from_memory", st);
    }

    td_model_info info;
    td_model_get_info(model, &info);
    td_sampler_desc desc = td_sampler_desc_default();
    desc.scheduler.kind = TD_SCHEDULER_KIND_DDIM;
    desc.scheduler.steps = steps;
    desc.batch = batch;
    desc.seed = 7;
    desc.threads = threads; /* the workspace below fits THREADS threads on any machine */

    size_t ws_len = 0, n = batch * info.sample_len;
    st = td_sample_workspace_len(model, &desc, &ws_len);
    if (st != TD_STATUS_OK) {
        report("td_sample_workspace_len", st);
    } else {
        float *ws = malloc(ws_len * sizeof(float));
        float *images = malloc(n * sizeof(float));
        st = ws != NULL && images != NULL ? td_sample(model, &desc, ws, ws_len, images, n)
                                          : TD_STATUS_BUFFER_TOO_SMALL;
        if (st != TD_STATUS_OK) {
            report("td_sample", st);
        } else {
            /* FNV-1a over the bytes of x_0: equal runs print equal checksums. */
            uint64_t hash = 1469598103934665603ull;
            const unsigned char *bytes = (const unsigned char *)images;
            for (size_t i = 0; i < n * sizeof(float); i++) {
                hash = (hash ^ bytes[i]) * 1099511628211ull;
            }
            printf("workspace %zu floats for %zu thread(s); %zu images %zux%zux%zu; x_0 fnv1a "
                   "%016llx\n",
                   ws_len, threads, batch, info.in_channels, info.height, info.width,
                   (unsigned long long)hash);
        }
        free(ws), free(images);
    }
    td_model_free(model);
    free(weights); /* only after td_model_free */
    return st == TD_STATUS_OK ? 0 : 1;
}
