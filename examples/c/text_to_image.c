/*
 * text_to_image.c: run a StableDiffusionPipeline folder (text encoder, UNet, VAE) from a
 * prompt with libtinydiffusion and write the decoded images as raw float32.
 *
 *   cargo build --release -p tinydiffusion-capi
 *   gcc -std=c99 -Wall -Wextra -Werror -O2 -I include examples/c/text_to_image.c \
 *       target/release/libtinydiffusion.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o t2i_c
 *   ./t2i_c tests/fixtures/sd-pipeline/sd1 out.raw "a photo of a cat" --negative blurry
 *
 * Options: --negative TEXT, --guidance S (diffusers' guidance_scale, default 7.5), --steps N
 * (0: the scheduler's default), --seed S, --batch B (images of the prompt).
 * out.raw: the VAE output [B, 3, H, W] as native-endian float32, before (x / 2 + 0.5) clamping.
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

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL_DIR OUT.raw PROMPT [--negative T] [--guidance S] "
                        "[--steps N] [--seed S] [--batch B]\n", argv[0]);
        return 2;
    }
    td_sampler_desc desc = td_sampler_desc_default();
    desc.prompt = argv[3];
    for (int i = 4; i + 1 < argc; i += 2) {
        const char *flag = argv[i], *value = argv[i + 1];
        if (strcmp(flag, "--negative") == 0) {
            desc.negative_prompt = value;
        } else if (strcmp(flag, "--guidance") == 0) {
            desc.guidance_scale = (float)strtod(value, NULL);
        } else if (strcmp(flag, "--steps") == 0) {
            desc.scheduler.steps = (size_t)strtoull(value, NULL, 10);
        } else if (strcmp(flag, "--seed") == 0) {
            desc.seed = (uint64_t)strtoull(value, NULL, 10);
        } else if (strcmp(flag, "--batch") == 0) {
            desc.batch = (size_t)strtoull(value, NULL, 10);
        } else {
            fprintf(stderr, "unknown option %s\n", flag);
            return 2;
        }
    }
    td_model *model = NULL;
    td_status st = td_model_load(argv[1], &model);
    if (st != TD_STATUS_OK) {
        return report("td_model_load", st);
    }
    td_model_info info;
    st = td_model_get_info(model, &info);
    if (st != TD_STATUS_OK) {
        td_model_free(model);
        return report("td_model_get_info", st);
    }
    size_t ws_len = 0;
    st = td_sample_workspace_len(model, &desc, &ws_len);
    if (st != TD_STATUS_OK) {
        td_model_free(model);
        return report("td_sample_workspace_len", st);
    }
    size_t out_len = desc.batch * info.image_len;
    float *ws = malloc(ws_len * sizeof(float));
    float *out = malloc(out_len * sizeof(float));
    if (ws == NULL || out == NULL) {
        fprintf(stderr, "out of memory\n");
        td_model_free(model);
        return 1;
    }
    st = td_sample(model, &desc, ws, ws_len, out, out_len);
    int rc = 0;
    if (st != TD_STATUS_OK) {
        rc = report("td_sample", st);
    } else {
        FILE *f = fopen(argv[2], "wb");
        int ok = f != NULL && fwrite(out, sizeof(float), out_len, f) == out_len;
        if (f != NULL && fclose(f) != 0) {
            ok = 0;
        }
        if (!ok) {
            fprintf(stderr, "cannot write %s\n", argv[2]);
            rc = 1;
        } else {
            printf("%zu images of %zux%zux%zu, workspace %zu bytes\n", desc.batch,
                   info.image_channels, info.image_height, info.image_width,
                   ws_len * sizeof(float));
        }
    }
    free(ws);
    free(out);
    td_model_free(model);
    return rc;
}
