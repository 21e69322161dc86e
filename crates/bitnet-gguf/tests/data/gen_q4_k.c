/* Writes q4_k.bin: ggml's reference Q4_K quantizer (quantize_row_q4_K_ref) applied to
 * q4_k_input.f32 (written by gen_golden.py), the golden bytes tests/golden.rs compares
 * encode_q4_k against. gguf-py has no Q4_K quantizer, so this one is ggml's own C code.
 *
 * Build against llama.cpp's ggml sources (e.g. the copy bench/compare.sh unpacks from the
 * llama-cpp-python sdist under target/compare/llama/vendor/llama.cpp/ggml), for plain x86-64:
 * no -march, so the compiler cannot contract a*b+c into FMA (bitnet-gguf's port has none):
 *
 *   G=target/compare/llama/vendor/llama.cpp/ggml
 *   gcc -O2 -I$G/include -I$G/src crates/bitnet-gguf/tests/data/gen_q4_k.c \
 *       $G/src/ggml-quants.c -o /tmp/gen_q4_k -lm
 *   /tmp/gen_q4_k crates/bitnet-gguf/tests/data/q4_k_input.f32 crates/bitnet-gguf/tests/data/q4_k.bin
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ggml-common.h"
#include "ggml-quants.h"

/* ggml-quants.c references these; the Q4_K reference quantizer never calls them. */
void ggml_abort(const char *file, int line, const char *fmt, ...) { (void)file; (void)line; (void)fmt; abort(); }
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void)type; (void)ne; abort(); }
const char *ggml_type_name(enum ggml_type type) { (void)type; abort(); }
size_t ggml_type_size(enum ggml_type type) { (void)type; abort(); }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT.f32 OUTPUT.bin\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 1; }
    fseek(f, 0, SEEK_END);
    long n = ftell(f) / 4;
    fseek(f, 0, SEEK_SET);
    if (n % QK_K != 0) { fprintf(stderr, "%ld values is not a multiple of %d\n", n, QK_K); return 1; }
    float *x = malloc(n * sizeof(float));
    if (fread(x, sizeof(float), n, f) != (size_t)n) { perror("read"); return 1; }
    fclose(f);
    size_t nb = n / QK_K;
    block_q4_K *y = malloc(nb * sizeof(block_q4_K));
    quantize_row_q4_K_ref(x, y, n);
    FILE *o = fopen(argv[2], "wb");
    if (!o || fwrite(y, sizeof(block_q4_K), nb, o) != nb) { perror(argv[2]); return 1; }
    fclose(o);
    return 0;
}
