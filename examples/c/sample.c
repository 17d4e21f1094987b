/*
 * sample.c: draw a batch of images from a diffusers model folder with libtinydiffusion and
 * write them side by side as one PGM (1 channel) or PPM (3 channels) image.
 *
 *   cargo build --release -p tinydiffusion-capi
 *   gcc -std=c99 -Wall -Wextra -Werror -O2 -I include examples/c/sample.c \
 *       target/release/libtinydiffusion.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o sample_c
 *   ./sample_c tests/fixtures/tiny-gray8 out.pgm --batch 4 --seed 1 --scheduler ddim --steps 20
 *
 * Options: --batch B, --seed S, --scheduler config|ddpm|ddim|euler|euler-a|dpm, --steps N (0: default), --eta E,
 * --ddim-next, --class K (class-conditional models), --guidance W, --null-class K,
 * --raw FILE (also write x_0 as raw native-endian float32, [B, C, H, W]).
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

static int parse_u64(const char *s, uint64_t *out) {
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end != '\0' || s[0] == '-') {
        return 0;
    }
    *out = (uint64_t)v;
    return 1;
}

static int parse_i64(const char *s, int64_t *out) {
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0') {
        return 0;
    }
    *out = (int64_t)v;
    return 1;
}

static int parse_double(const char *s, double *out) {
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || *end != '\0') {
        return 0;
    }
    *out = v;
    return 1;
}

/* The batch side by side: B images of H x W become one H x (B * W) picture. */
static int write_image(const char *path, const float *x, const td_model_info *info, size_t batch) {
    size_t c = info->in_channels, h = info->height, w = info->width;
    if (c != 1 && c != 3) {
        fprintf(stderr, "%s: %zu channels: only 1 (PGM) and 3 (PPM) can be written\n", path, c);
        return 1;
    }
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    fprintf(f, "%s\n%zu %zu\n255\n", c == 1 ? "P5" : "P6", batch * w, h);
    for (size_t y = 0; y < h; y++) {
        for (size_t b = 0; b < batch; b++) {
            for (size_t xx = 0; xx < w; xx++) {
                for (size_t ch = 0; ch < c; ch++) {
                    float v = x[((b * c + ch) * h + y) * w + xx];
                    float u = (v + 1.0f) * 0.5f;
                    u = u < 0.0f ? 0.0f : (u > 1.0f ? 1.0f : u);
                    fputc((int)(u * 255.0f + 0.5f), f);
                }
            }
        }
    }
    if (fclose(f) != 0) {
        perror(path);
        return 1;
    }
    return 0;
}

static int usage(void) {
    fprintf(stderr,
            "usage: sample MODEL_DIR OUT.pgm|OUT.ppm [--batch B] [--seed S] [--scheduler config|ddpm|ddim|euler|euler-a|dpm]\n"
            "              [--steps N] [--eta E] [--ddim-next] [--class K] [--guidance W]\n"
            "              [--null-class K] [--raw FILE]\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        return usage();
    }
    const char *model_dir = argv[1];
    const char *image_path = argv[2];
    const char *raw_path = NULL;
    td_sampler_desc desc = td_sampler_desc_default();
    desc.batch = 4;
    int has_class = 0;
    int64_t class_label = 0;

    for (int i = 3; i < argc; i++) {
        const char *flag = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t u = 0;
        int64_t s = 0;
        double d = 0.0;
        if (strcmp(flag, "--ddim-next") == 0) {
            desc.scheduler.flags |= TD_SCHEDULER_DDIM_NEXT_TIMESTEP;
            continue;
        }
        if (value == NULL) {
            return usage();
        }
        i++;
        if (strcmp(flag, "--batch") == 0 && parse_u64(value, &u)) {
            desc.batch = (size_t)u;
        } else if (strcmp(flag, "--seed") == 0 && parse_u64(value, &u)) {
            desc.seed = u;
        } else if (strcmp(flag, "--steps") == 0 && parse_u64(value, &u)) {
            desc.scheduler.steps = (size_t)u;
        } else if (strcmp(flag, "--eta") == 0 && parse_double(value, &d)) {
            desc.scheduler.eta = d;
        } else if (strcmp(flag, "--guidance") == 0 && parse_double(value, &d)) {
            desc.guidance = (float)d;
        } else if (strcmp(flag, "--class") == 0 && parse_i64(value, &s)) {
            has_class = 1;
            class_label = s;
        } else if (strcmp(flag, "--null-class") == 0 && parse_i64(value, &s)) {
            desc.null_class = s;
        } else if (strcmp(flag, "--scheduler") == 0) {
            if (strcmp(value, "ddpm") == 0) {
                desc.scheduler.kind = TD_SCHEDULER_KIND_DDPM;
            } else if (strcmp(value, "ddim") == 0) {
                desc.scheduler.kind = TD_SCHEDULER_KIND_DDIM;
            } else if (strcmp(value, "euler") == 0) {
                desc.scheduler.kind = TD_SCHEDULER_KIND_EULER;
            } else if (strcmp(value, "euler-a") == 0) {
                desc.scheduler.kind = TD_SCHEDULER_KIND_EULER_ANCESTRAL;
            } else if (strcmp(value, "dpm") == 0) {
                desc.scheduler.kind = TD_SCHEDULER_KIND_DPM_SOLVER_MULTISTEP;
            } else if (strcmp(value, "config") == 0) {
                desc.scheduler.kind = TD_SCHEDULER_KIND_FROM_CONFIG;
            } else {
                return usage();
            }
        } else if (strcmp(flag, "--raw") == 0) {
            raw_path = value;
        } else {
            return usage();
        }
    }

    td_model *model = NULL;
    td_status st = td_model_load(model_dir, &model);
    if (st != TD_STATUS_OK) {
        return report(model_dir, st);
    }
    td_model_info info;
    st = td_model_get_info(model, &info);
    if (st != TD_STATUS_OK) {
        td_model_free(model);
        return report("td_model_get_info", st);
    }
    /* Class-conditional models need a label: --class, else 0. */
    if (info.num_classes > 0) {
        desc.class_label = has_class ? class_label : 0;
    } else if (has_class) {
        desc.class_label = class_label; /* the library says why this is wrong */
    }

    size_t ws_len = 0;
    st = td_sample_workspace_len(model, &desc, &ws_len);
    if (st != TD_STATUS_OK) {
        td_model_free(model);
        return report("td_sample_workspace_len", st);
    }
    size_t out_len = desc.batch * info.sample_len;
    float *workspace = malloc(ws_len * sizeof(float));
    float *out = malloc(out_len * sizeof(float));
    if (workspace == NULL || out == NULL) {
        fprintf(stderr, "out of memory (%zu + %zu floats)\n", ws_len, out_len);
        free(workspace);
        free(out);
        td_model_free(model);
        return 1;
    }

    int rc = 0;
    st = td_sample(model, &desc, workspace, ws_len, out, out_len);
    if (st != TD_STATUS_OK) {
        rc = report("td_sample", st);
    } else {
        rc = write_image(image_path, out, &info, desc.batch);
        if (rc == 0 && raw_path != NULL) {
            FILE *f = fopen(raw_path, "wb");
            int ok = f != NULL && fwrite(out, sizeof(float), out_len, f) == out_len;
            if (f != NULL && fclose(f) != 0) {
                ok = 0;
            }
            if (!ok) {
                perror(raw_path);
                rc = 1;
            }
        }
        if (rc == 0) {
            fprintf(stderr, "wrote %s (%zu images %zux%zu, %zu channels; workspace %zu floats)\n", image_path,
                    desc.batch, info.height, info.width, info.in_channels, ws_len);
        }
    }
    free(workspace);
    free(out);
    td_model_free(model);
    return rc;
}
