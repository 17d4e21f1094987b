/*
 * negative.c: the C API's error paths, run by tests/c_api.rs.
 *
 *   negative CLASS_MODEL_DIR UNCOND_MODEL_DIR BAD_JSON_DIR TRUNCATED_WEIGHTS_DIR
 *
 * CLASS_MODEL_DIR is a class-conditional UNet2DModel folder with 3 channels and
 * "norm_num_groups": 8 in its config (tests/fixtures/tiny-class16), UNCOND_MODEL_DIR an
 * unconditional one (tests/fixtures/tiny-gray8); the other two are copies of a model folder
 * with a malformed config.json / truncated weights file. Prints one line per failed check and
 * a summary; exits 0 when every check passes.
 */
#include <math.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinydiffusion.h"

static int passed = 0, failed = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                        \
        }                                                                                          \
    } while (0)

/* Expects a status; on mismatch prints both and the last error message. */
#define EXPECT(call, expected)                                                                     \
    do {                                                                                           \
        td_status got_ = (call);                                                                   \
        if (got_ == (expected)) {                                                                  \
            passed++;                                                                              \
        } else {                                                                                   \
            char msg_[256];                                                                        \
            td_last_error_message(msg_, sizeof msg_, NULL);                                        \
            failed++;                                                                              \
            fprintf(stderr, "FAIL %s:%d: %s\n  got %d (%s), expected %d (%s); last error: %s\n",   \
                    __FILE__, __LINE__, #call, (int)got_, td_status_message(got_), (int)(expected), \
                    td_status_message(expected), msg_);                                            \
        }                                                                                          \
    } while (0)

static char *read_file(const char *dir, const char *name, size_t *len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        perror(path);
        exit(2);
    }
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

/* A copy of `src` with the first `from` replaced by `to` (exits if absent). */
static char *replace(const char *src, const char *from, const char *to) {
    const char *at = strstr(src, from);
    if (at == NULL) {
        fprintf(stderr, "fixture config lacks %s\n", from);
        exit(2);
    }
    size_t head = (size_t)(at - src), n = strlen(src) - strlen(from) + strlen(to);
    char *out = malloc(n + 1);
    memcpy(out, src, head);
    strcpy(out + head, to);
    strcat(out, at + strlen(from));
    return out;
}

static int same_bits(const float *a, const float *b, size_t n) {
    return memcmp(a, b, n * sizeof(float)) == 0;
}

static void status_and_messages(void) {
    for (int s = 0; s <= TD_STATUS_DEVICE_UNAVAILABLE; s++) {
        const char *m = td_status_message(s);
        CHECK(m != NULL && strlen(m) > 0 && strcmp(m, "unknown status") != 0);
    }
    CHECK(strcmp(td_status_message(99), "unknown status") == 0);
    CHECK(strcmp(td_status_message(-1), "unknown status") == 0);
    CHECK(td_version() != NULL && strlen(td_version()) > 0);

    /* A failure leaves a message; it can be measured, truncated and copied. */
    td_model *m = (td_model *)&passed; /* junk: must be overwritten with NULL */
    EXPECT(td_model_load("/nonexistent/tinydiffusion/model", &m), TD_STATUS_IO);
    CHECK(m == NULL);
    size_t len = 0;
    EXPECT(td_last_error_message(NULL, 0, &len), TD_STATUS_BUFFER_TOO_SMALL);
    CHECK(len > 10);
    char small[8];
    EXPECT(td_last_error_message(small, sizeof small, NULL), TD_STATUS_BUFFER_TOO_SMALL);
    CHECK(strlen(small) == 7);
    char big[1024];
    size_t len2 = 0;
    EXPECT(td_last_error_message(big, sizeof big, &len2), TD_STATUS_OK);
    CHECK(len2 == len && strlen(big) == len && strstr(big, "/nonexistent/tinydiffusion/model") != NULL);
    EXPECT(td_last_error_message(NULL, 10, NULL), TD_STATUS_NULL_POINTER);
    /* Querying did not change the message. */
    EXPECT(td_last_error_message(big, sizeof big, &len2), TD_STATUS_OK);
    CHECK(len2 == len);
}

static void loading(const char *class_dir, const char *bad_json_dir, const char *truncated_dir) {
    td_model *m = NULL;
    EXPECT(td_model_load(NULL, &m), TD_STATUS_NULL_POINTER);
    CHECK(m == NULL);
    EXPECT(td_model_load(class_dir, NULL), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_load(bad_json_dir, &m), TD_STATUS_INVALID_JSON);
    CHECK(m == NULL);
    EXPECT(td_model_load(truncated_dir, &m), TD_STATUS_INVALID_WEIGHTS);
    CHECK(m == NULL);
    td_model_free(NULL); /* ignored */

    size_t wlen = 0, clen = 0;
    char *weights = read_file(class_dir, "diffusion_pytorch_model.safetensors", &wlen);
    char *config = read_file(class_dir, "config.json", &clen);
    const uint8_t *w = (const uint8_t *)weights;

    EXPECT(td_model_from_memory(NULL, wlen, config, clen, NULL, 0, &m), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_from_memory(w, wlen, NULL, clen, NULL, 0, &m), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_from_memory(w, wlen, config, clen, NULL, 5, &m), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_from_memory(w, wlen, config, clen, NULL, 0, NULL), TD_STATUS_NULL_POINTER);
    /* Malformed safetensors: truncated, empty, garbage. */
    EXPECT(td_model_from_memory(w, wlen / 2, config, clen, NULL, 0, &m), TD_STATUS_INVALID_WEIGHTS);
    CHECK(m == NULL);
    EXPECT(td_model_from_memory(w, 0, config, clen, NULL, 0, &m), TD_STATUS_INVALID_WEIGHTS);
    static const uint8_t garbage[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3};
    EXPECT(td_model_from_memory(garbage, sizeof garbage, config, clen, NULL, 0, &m), TD_STATUS_INVALID_WEIGHTS);
    /* Bad config.json: not JSON, not UTF-8, out of range, unsupported, not matching the weights. */
    EXPECT(td_model_from_memory(w, wlen, "{", 1, NULL, 0, &m), TD_STATUS_INVALID_JSON);
    EXPECT(td_model_from_memory(w, wlen, "\xff\xfe", 2, NULL, 0, &m), TD_STATUS_INVALID_JSON);
    EXPECT(td_model_from_memory(w, wlen, config, 0, NULL, 0, &m), TD_STATUS_INVALID_JSON);
    char *groups = replace(config, "\"norm_num_groups\": 8", "\"norm_num_groups\": 7");
    EXPECT(td_model_from_memory(w, wlen, groups, strlen(groups), NULL, 0, &m), TD_STATUS_INVALID_CONFIG);
    char *act = replace(config, "\"act_fn\": \"silu\"", "\"act_fn\": \"tanh\"");
    EXPECT(td_model_from_memory(w, wlen, act, strlen(act), NULL, 0, &m), TD_STATUS_UNSUPPORTED);
    char *chans = replace(config, "\"in_channels\": 3", "\"in_channels\": 1");
    EXPECT(td_model_from_memory(w, wlen, chans, strlen(chans), NULL, 0, &m), TD_STATUS_INVALID_WEIGHTS);
    /* Bad scheduler_config.json. */
    const char *s1 = "[1";
    EXPECT(td_model_from_memory(w, wlen, config, clen, s1, strlen(s1), &m), TD_STATUS_INVALID_JSON);
    const char *s2 = "{\"beta_schedule\": \"cubic\"}";
    EXPECT(td_model_from_memory(w, wlen, config, clen, s2, strlen(s2), &m), TD_STATUS_UNSUPPORTED);
    const char *s3 = "{\"num_train_timesteps\": 0}";
    EXPECT(td_model_from_memory(w, wlen, config, clen, s3, strlen(s3), &m), TD_STATUS_INVALID_CONFIG);
    CHECK(m == NULL);

    /* From memory with a scheduler config, the same samples as from the folder (defaults). */
    const char *ddim = "{\"_class_name\": \"DDIMScheduler\", \"num_train_timesteps\": 1000}";
    EXPECT(td_model_from_memory(w, wlen, config, clen, ddim, strlen(ddim), &m), TD_STATUS_OK);
    td_model *from_dir = NULL;
    EXPECT(td_model_load(class_dir, &from_dir), TD_STATUS_OK);
    if (m != NULL && from_dir != NULL) {
        /* Device choice: checked arguments; this library is built without the `cuda` feature,
           so a GPU is unavailable and the model stays on the CPU. */
        EXPECT(td_model_set_device(NULL, TD_DEVICE_KIND_CPU, 0), TD_STATUS_NULL_POINTER);
        EXPECT(td_model_set_device(from_dir, 7, 0), TD_STATUS_INVALID_ARGUMENT);
        EXPECT(td_model_set_device(from_dir, TD_DEVICE_KIND_CUDA, -1), TD_STATUS_INVALID_ARGUMENT);
        EXPECT(td_model_set_device(from_dir, TD_DEVICE_KIND_CUDA, 0), TD_STATUS_DEVICE_UNAVAILABLE);
        EXPECT(td_model_set_device(from_dir, TD_DEVICE_KIND_CPU, 0), TD_STATUS_OK);
        td_model_info info;
        EXPECT(td_model_get_info(m, &info), TD_STATUS_OK);
        CHECK(info.scheduler_kind == TD_SCHEDULER_KIND_DDIM && info.num_train_timesteps == 1000);
        EXPECT(td_model_get_info(from_dir, &info), TD_STATUS_OK);
        CHECK(info.scheduler_kind == TD_SCHEDULER_KIND_DDPM);
        td_sampler_desc d = td_sampler_desc_default();
        d.scheduler.kind = TD_SCHEDULER_KIND_DDIM;
        d.scheduler.steps = 2;
        d.batch = 2;
        d.seed = 11;
        d.class_label = 4;
        size_t ws_len = 0;
        EXPECT(td_sample_workspace_len(m, &d, &ws_len), TD_STATUS_OK);
        float *ws = malloc(ws_len * sizeof(float));
        size_t n = d.batch * info.sample_len;
        float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
        EXPECT(td_sample(m, &d, ws, ws_len, a, n), TD_STATUS_OK);
        EXPECT(td_sample(from_dir, &d, ws, ws_len, b, n), TD_STATUS_OK);
        CHECK(same_bits(a, b, n));
        free(ws);
        free(a);
        free(b);
    }
    td_model_free(from_dir);
    td_model_free(m);
    free(groups);
    free(act);
    free(chans);
    free(config);
    free(weights); /* only after td_model_free: the model borrowed these bytes */
}

static void model_eval(td_model *m) {
    td_model_info info;
    EXPECT(td_model_get_info(NULL, &info), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_get_info(m, NULL), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_get_info(m, &info), TD_STATUS_OK);
    CHECK(info.in_channels == 3 && info.out_channels == 3 && info.height == 16 && info.width == 16);
    CHECK(info.sample_len == 3 * 16 * 16 && info.num_classes == 11 && info.parameters > 0);
    CHECK(info.flops_per_sample > 0);

    size_t ws_len = 0;
    EXPECT(td_model_workspace_len(NULL, 1, &ws_len), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_workspace_len(m, 1, NULL), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_workspace_len(m, 0, &ws_len), TD_STATUS_INVALID_ARGUMENT);
    EXPECT(td_model_workspace_len(m, SIZE_MAX, &ws_len), TD_STATUS_BAD_SIZE);
    EXPECT(td_model_workspace_len(m, SIZE_MAX / 64, &ws_len), TD_STATUS_BAD_SIZE);
    EXPECT(td_model_workspace_len(m, 2, &ws_len), TD_STATUS_OK);

    size_t n = 2 * info.sample_len;
    float *ws = malloc(ws_len * sizeof(float));
    float *x = malloc(n * sizeof(float));
    float *out = malloc(n * sizeof(float));
    float *out2 = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    }
    float t[2] = {10.0f, 500.5f};
    int64_t labels[2] = {1, 10};

    EXPECT(td_model_eval(m, ws, ws_len, x, n, t, 2, labels, 2, out, n), TD_STATUS_OK);
    /* One timestep / one label for all equals the same value repeated. */
    float t1[2] = {77.0f, 77.0f};
    int64_t l1[2] = {3, 3};
    EXPECT(td_model_eval(m, ws, ws_len, x, n, t1, 1, l1, 1, out, n), TD_STATUS_OK);
    EXPECT(td_model_eval(m, ws, ws_len, x, n, t1, 2, l1, 2, out2, n), TD_STATUS_OK);
    CHECK(same_bits(out, out2, n));

    EXPECT(td_model_eval(NULL, ws, ws_len, x, n, t, 2, labels, 2, out, n), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_eval(m, NULL, ws_len, x, n, t, 2, labels, 2, out, n), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_eval(m, ws, ws_len, NULL, n, t, 2, labels, 2, out, n), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_eval(m, ws, ws_len, x, n, NULL, 2, labels, 2, out, n), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_eval(m, ws, ws_len, x, n, t, 2, NULL, 2, out, n), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_eval(m, ws, ws_len, x, n, t, 2, labels, 2, NULL, n), TD_STATUS_NULL_POINTER);
    EXPECT(td_model_eval(m, ws, ws_len, x, n - 1, t, 2, labels, 2, out, n), TD_STATUS_BAD_SIZE);
    EXPECT(td_model_eval(m, ws, ws_len, x, 0, t, 2, labels, 2, out, n), TD_STATUS_BAD_SIZE);
    EXPECT(td_model_eval(m, ws, ws_len, x, n, t, 2, labels, 2, out, n - 1), TD_STATUS_BUFFER_TOO_SMALL);
    EXPECT(td_model_eval(m, ws, ws_len - 1, x, n, t, 2, labels, 2, out, n), TD_STATUS_BUFFER_TOO_SMALL);
    EXPECT(td_model_eval(m, ws, ws_len, x, n / 2, t, 1, labels, 1, out, n), TD_STATUS_BAD_SIZE); /* batch 1 */
    EXPECT(td_model_eval(m, ws, ws_len, x, n / 2, t, 2, labels, 1, out, n / 2), TD_STATUS_BAD_SIZE);
    EXPECT(td_model_eval(m, ws, ws_len, x, n / 2, t, 1, labels, 2, out, n / 2), TD_STATUS_BAD_SIZE);
    EXPECT(td_model_eval(m, ws, ws_len, x, n / 2, t, 1, labels, 1, out, n / 2), TD_STATUS_OK);
    EXPECT(td_model_eval(m, ws, ws_len, x, n, t, 0, labels, 2, out, n), TD_STATUS_BAD_SIZE);
    EXPECT(td_model_eval(m, ws, ws_len, x, n, t, 2, labels, 0, out, n), TD_STATUS_BAD_SIZE);
    EXPECT(td_model_eval(m, ws, ws_len, x, n, t, 2, NULL, 0, out, n), TD_STATUS_INVALID_ARGUMENT);
    int64_t bad_labels[2] = {1, 11};
    EXPECT(td_model_eval(m, ws, ws_len, x, n, t, 2, bad_labels, 2, out, n), TD_STATUS_INVALID_ARGUMENT);
    float nan_t[2] = {10.0f, NAN};
    EXPECT(td_model_eval(m, ws, ws_len, x, n, nan_t, 2, labels, 2, out, n), TD_STATUS_INVALID_ARGUMENT);
    /* Overlapping buffers: output inside the workspace, output over the input. */
    EXPECT(td_model_eval(m, ws, ws_len, x, n, t, 2, labels, 2, ws + 16, n), TD_STATUS_INVALID_ARGUMENT);
    EXPECT(td_model_eval(m, ws, ws_len, x, n, t, 2, labels, 2, x, n), TD_STATUS_INVALID_ARGUMENT);
    free(ws);
    free(x);
    free(out);
    free(out2);
}

static void sampling(td_model *m, td_model *uncond) {
    td_model_info info;
    td_model_get_info(m, &info);
    td_sampler_desc d = td_sampler_desc_default();
    d.scheduler.kind = TD_SCHEDULER_KIND_DDIM;
    d.scheduler.steps = 2;
    d.scheduler.eta = 0.5;
    d.batch = 2;
    d.seed = 3;
    d.class_label = 2;
    size_t ws_len = 0, n = d.batch * info.sample_len;

    EXPECT(td_sample_workspace_len(NULL, &d, &ws_len), TD_STATUS_NULL_POINTER);
    EXPECT(td_sample_workspace_len(m, NULL, &ws_len), TD_STATUS_NULL_POINTER);
    EXPECT(td_sample_workspace_len(m, &d, NULL), TD_STATUS_NULL_POINTER);
    EXPECT(td_sample_workspace_len(m, &d, &ws_len), TD_STATUS_OK);
    size_t guided_len = 0;
    td_sampler_desc g = d;
    g.guidance = 2.0f;
    EXPECT(td_sample_workspace_len(m, &g, &guided_len), TD_STATUS_OK);
    CHECK(guided_len > ws_len);

    float *ws = malloc(guided_len * sizeof(float));
    float *out = malloc(n * sizeof(float));
    float *ref = malloc(n * sizeof(float));
    EXPECT(td_sample(m, &d, ws, ws_len, ref, n), TD_STATUS_OK);

    td_sampler_desc b = d;
    b.batch = 0;
    EXPECT(td_sample_workspace_len(m, &b, &ws_len), TD_STATUS_INVALID_ARGUMENT);
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_INVALID_ARGUMENT);
    b = d;
    b.batch = SIZE_MAX / 2;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_BAD_SIZE);
    b = d;
    b.scheduler.kind = 99; /* 6..8 are the sigma schedulers */
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_INVALID_ARGUMENT);
    b = d;
    b.scheduler.flags = 0x80;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_INVALID_ARGUMENT);
    b = d;
    b.scheduler.eta = -1.0;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_INVALID_ARGUMENT);
    b.scheduler.eta = NAN;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_INVALID_ARGUMENT);
    b = d;
    b.scheduler.steps = 5000;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_INVALID_ARGUMENT);

    EXPECT(td_sample(NULL, &d, ws, ws_len, out, n), TD_STATUS_NULL_POINTER);
    EXPECT(td_sample(m, NULL, ws, ws_len, out, n), TD_STATUS_NULL_POINTER);
    EXPECT(td_sample(m, &d, NULL, ws_len, out, n), TD_STATUS_NULL_POINTER);
    EXPECT(td_sample(m, &d, ws, ws_len, NULL, n), TD_STATUS_NULL_POINTER);
    EXPECT(td_sample(m, &d, ws, ws_len - 1, out, n), TD_STATUS_BUFFER_TOO_SMALL);
    EXPECT(td_sample(m, &d, ws, 0, out, n), TD_STATUS_BUFFER_TOO_SMALL);
    EXPECT(td_sample(m, &g, ws, ws_len, out, n), TD_STATUS_BUFFER_TOO_SMALL); /* guidance needs more */
    EXPECT(td_sample(m, &d, ws, ws_len, out, n - 1), TD_STATUS_BUFFER_TOO_SMALL);
    EXPECT(td_sample(m, &d, ws, ws_len, out, n + 1), TD_STATUS_BAD_SIZE);

    /* Labels. */
    b = d;
    b.class_label = TD_NO_CLASS;
    /* No label on a class-conditional model: the default labels, as the CLI's (image i gets
     * class i mod (num_classes - 1)), so the same as labels {0, 1} here. */
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_OK);
    {
        int64_t first[2] = {0, 1};
        float *explicit_out = malloc(n * sizeof(float));
        td_sampler_desc e = d;
        e.class_label = TD_NO_CLASS;
        e.class_labels = first;
        e.num_class_labels = 2;
        EXPECT(td_sample(m, &e, ws, ws_len, explicit_out, n), TD_STATUS_OK);
        CHECK(same_bits(out, explicit_out, n));
        free(explicit_out);
    }
    b.class_label = 11;
    EXPECT(td_sample_workspace_len(m, &b, &guided_len), TD_STATUS_INVALID_ARGUMENT);
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_INVALID_ARGUMENT);
    b.class_label = -5;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_INVALID_ARGUMENT);
    int64_t labels[3] = {2, 2, 2};
    b = d;
    b.class_labels = labels;
    b.num_class_labels = 3;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_BAD_SIZE);
    b.class_labels = NULL;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_NULL_POINTER);
    b.class_labels = labels;
    b.num_class_labels = 2; /* the same label per image as class_label = 2 */
    b.class_label = TD_NO_CLASS;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_OK);
    CHECK(same_bits(out, ref, n));
    labels[1] = 99;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_INVALID_ARGUMENT);

    /* Guidance. */
    b = g;
    b.guidance = NAN;
    EXPECT(td_sample(m, &b, ws, guided_len, out, n), TD_STATUS_INVALID_ARGUMENT);
    /* Every argument is checked before any size: a NaN scale is an error in
     * td_sample_workspace_len too, and in td_sample whatever the workspace. */
    {
        size_t unchanged = 12345;
        EXPECT(td_sample_workspace_len(m, &b, &unchanged), TD_STATUS_INVALID_ARGUMENT);
        CHECK(unchanged == 12345);
    }
    EXPECT(td_sample(m, &b, ws, 1, out, n), TD_STATUS_INVALID_ARGUMENT);
    b.guidance = INFINITY;
    EXPECT(td_sample_workspace_len(m, &b, &guided_len), TD_STATUS_INVALID_ARGUMENT);
    EXPECT(td_sample(m, &b, ws, 1, out, n), TD_STATUS_INVALID_ARGUMENT);
    /* A description from another header version is detected. */
    b = d;
    b.struct_size = sizeof b - 8;
    EXPECT(td_sample_workspace_len(m, &b, &ws_len), TD_STATUS_BAD_SIZE);
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_BAD_SIZE);
    /* The header before scheduler_class / scheduler_config_json is detected too. */
    b = d;
    b.struct_size = offsetof(td_sampler_desc, scheduler_class);
    EXPECT(td_sample_workspace_len(m, &b, &ws_len), TD_STATUS_BAD_SIZE);
    /* A scheduler by class name and config text: unknown names, both a name and a kind, bad
       JSON and unknown keys are typed errors; a good pair runs. */
    b = d;
    b.scheduler_class = "NoSuchScheduler";
    EXPECT(td_sample_workspace_len(m, &b, &ws_len), TD_STATUS_INVALID_ARGUMENT);
    b.scheduler_class = "LCMScheduler";
    b.scheduler.kind = TD_SCHEDULER_KIND_DDIM;
    EXPECT(td_sample_workspace_len(m, &b, &ws_len), TD_STATUS_INVALID_ARGUMENT);
    b.scheduler.kind = TD_SCHEDULER_KIND_FROM_CONFIG;
    b.scheduler_config_json = "{\"_class_name\": ";
    EXPECT(td_sample_workspace_len(m, &b, &ws_len), TD_STATUS_INVALID_JSON);
    b.scheduler_config_json = "{\"_class_name\": \"LCMScheduler\", \"no_such_key\": 1}";
    EXPECT(td_sample_workspace_len(m, &b, &ws_len), TD_STATUS_UNSUPPORTED);
    b.scheduler_config_json = "{\"_class_name\": \"LCMScheduler\", \"original_inference_steps\": 0}";
    EXPECT(td_sample_workspace_len(m, &b, &ws_len), TD_STATUS_INVALID_CONFIG);
    b.scheduler_config_json = "{\"_class_name\": \"TCDScheduler\"}";
    b.scheduler.steps = 2;
    EXPECT(td_sample_workspace_len(m, &b, &ws_len), TD_STATUS_OK);
    /* Threads: a size for N threads, never more than N used; the same output. */
    b = d;
    b.threads = 1025;
    EXPECT(td_sample_workspace_len(m, &b, &ws_len), TD_STATUS_INVALID_ARGUMENT);
    b.threads = 1;
    {
        size_t one = 0;
        EXPECT(td_sample_workspace_len(m, &b, &one), TD_STATUS_OK);
        float *ws1 = malloc(one * sizeof(float));
        EXPECT(td_sample(m, &b, ws1, one - 1, out, n), TD_STATUS_BUFFER_TOO_SMALL);
        EXPECT(td_sample(m, &b, ws1, one, out, n), TD_STATUS_OK);
        CHECK(same_bits(out, ref, n));
        free(ws1);
    }
    b = g;
    b.null_class = 50;
    EXPECT(td_sample(m, &b, ws, guided_len, out, n), TD_STATUS_INVALID_ARGUMENT);
    EXPECT(td_sample(m, &g, ws, guided_len, out, n), TD_STATUS_OK);
    b.null_class = 10; /* the default: the last class */
    float *guided = malloc(n * sizeof(float));
    EXPECT(td_sample(m, &b, ws, guided_len, guided, n), TD_STATUS_OK);
    CHECK(same_bits(out, guided, n));
    free(guided);

    /* Injected noise. */
    td_scheduler *s = NULL;
    EXPECT(td_scheduler_new(m, &d.scheduler, &s), TD_STATUS_OK);
    size_t steps = 0;
    EXPECT(td_scheduler_num_steps(s, &steps), TD_STATUS_OK);
    CHECK(steps == 2);
    float *init = calloc(n, sizeof(float));
    float *noise = calloc(steps * n, sizeof(float));
    b = d;
    b.initial_noise = init;
    b.initial_noise_len = n - 1;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_BAD_SIZE);
    b.initial_noise = NULL;
    b.initial_noise_len = n;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_NULL_POINTER);
    b = d;
    b.step_noise = noise;
    b.step_noise_len = (steps - 1) * n;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_BAD_SIZE);
    b.step_noise_len = SIZE_MAX;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_BAD_SIZE);
    b.step_noise_len = steps * n;
    b.initial_noise = init;
    b.initial_noise_len = n;
    EXPECT(td_sample(m, &b, ws, ws_len, out, n), TD_STATUS_OK);
    /* The output must not overlap an input. */
    EXPECT(td_sample(m, &b, ws, ws_len, noise, n), TD_STATUS_INVALID_ARGUMENT);
    EXPECT(td_sample(m, &d, ws, ws_len, ws + ws_len - n, n), TD_STATUS_INVALID_ARGUMENT);

    /* Schedulers. */
    td_scheduler *bad = (td_scheduler *)&passed;
    EXPECT(td_scheduler_new(NULL, &d.scheduler, &bad), TD_STATUS_NULL_POINTER);
    CHECK(bad == NULL);
    EXPECT(td_scheduler_new(m, NULL, &bad), TD_STATUS_NULL_POINTER);
    EXPECT(td_scheduler_new(m, &d.scheduler, NULL), TD_STATUS_NULL_POINTER);
    td_scheduler_desc sd = d.scheduler;
    sd.kind = -1;
    EXPECT(td_scheduler_new(m, &sd, &bad), TD_STATUS_INVALID_ARGUMENT);
    CHECK(bad == NULL);
    EXPECT(td_scheduler_num_steps(NULL, &steps), TD_STATUS_NULL_POINTER);
    EXPECT(td_scheduler_num_steps(s, NULL), TD_STATUS_NULL_POINTER);
    int64_t ts[8];
    EXPECT(td_scheduler_timesteps(s, ts, steps - 1), TD_STATUS_BUFFER_TOO_SMALL);
    EXPECT(td_scheduler_timesteps(s, NULL, 8), TD_STATUS_NULL_POINTER);
    EXPECT(td_scheduler_timesteps(s, ts, 8), TD_STATUS_OK);
    CHECK(ts[0] == 500 && ts[1] == 0);

    /* With a prebuilt scheduler: the same bits; desc->scheduler is ignored. */
    b = d;
    b.scheduler.kind = 99;
    EXPECT(td_sample_with_scheduler(m, s, &b, ws, ws_len, out, n), TD_STATUS_OK);
    CHECK(same_bits(out, ref, n));
    EXPECT(td_sample_with_scheduler(m, NULL, &b, ws, ws_len, out, n), TD_STATUS_NULL_POINTER);
    EXPECT(td_sample_with_scheduler(m, s, &b, ws, ws_len - 1, out, n), TD_STATUS_BUFFER_TOO_SMALL);
    td_scheduler_free(s);
    td_scheduler_free(NULL);

    /* Unconditional model: no labels, no guidance. */
    td_model_info ui;
    td_model_get_info(uncond, &ui);
    CHECK(ui.num_classes == 0 && ui.in_channels == 1);
    td_sampler_desc u = td_sampler_desc_default();
    u.scheduler.steps = 2;
    size_t uws = 0, un = ui.sample_len;
    EXPECT(td_sample_workspace_len(uncond, &u, &uws), TD_STATUS_OK);
    float *uw = malloc(uws * sizeof(float));
    float *uo = malloc(un * sizeof(float));
    EXPECT(td_sample(uncond, &u, uw, uws, uo, un), TD_STATUS_OK);
    u.class_label = 0;
    EXPECT(td_sample(uncond, &u, uw, uws, uo, un), TD_STATUS_INVALID_ARGUMENT);
    u.class_label = TD_NO_CLASS;
    u.class_labels = labels;
    u.num_class_labels = 1;
    EXPECT(td_sample(uncond, &u, uw, uws, uo, un), TD_STATUS_INVALID_ARGUMENT);
    u.class_labels = NULL;
    u.num_class_labels = 0;
    u.guidance = 1.0f;
    size_t uws_guided = 0;
    /* Guidance on an unconditional model: an error in both calls (it used to give a size). */
    EXPECT(td_sample_workspace_len(uncond, &u, &uws_guided), TD_STATUS_INVALID_ARGUMENT);
    EXPECT(td_sample(uncond, &u, uw, uws, uo, un), TD_STATUS_INVALID_ARGUMENT);
    /* Threads of a model. */
    {
        size_t t = 0;
        EXPECT(td_model_set_threads(NULL, 1), TD_STATUS_NULL_POINTER);
        EXPECT(td_model_set_threads(uncond, 2000), TD_STATUS_INVALID_ARGUMENT);
        EXPECT(td_model_get_threads(uncond, NULL), TD_STATUS_NULL_POINTER);
        EXPECT(td_model_set_threads(uncond, 1), TD_STATUS_OK);
        EXPECT(td_model_get_threads(uncond, &t), TD_STATUS_OK);
        CHECK(t == 1);
        EXPECT(td_model_set_threads(uncond, 3), TD_STATUS_OK);
        EXPECT(td_model_get_threads(uncond, &t), TD_STATUS_OK);
        CHECK(t == 3);
        EXPECT(td_model_set_threads(uncond, 0), TD_STATUS_OK);
        EXPECT(td_model_get_threads(uncond, &t), TD_STATUS_OK);
        CHECK(t >= 1);
    }
    free(uw);
    free(uo);

    free(init);
    free(noise);
    free(ws);
    free(out);
    free(ref);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: negative CLASS_MODEL_DIR UNCOND_MODEL_DIR BAD_JSON_DIR TRUNCATED_DIR\n");
        return 2;
    }
    status_and_messages();
    loading(argv[1], argv[3], argv[4]);
    td_model *m = NULL, *uncond = NULL;
    EXPECT(td_model_load(argv[1], &m), TD_STATUS_OK);
    EXPECT(td_model_load(argv[2], &uncond), TD_STATUS_OK);
    if (m != NULL && uncond != NULL) {
        model_eval(m);
        sampling(m, uncond);
    }
    td_model_free(m);
    td_model_free(uncond);
    printf("negative.c: %d checks passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
