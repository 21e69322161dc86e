# Sourced by session 42's GPU calls (bench/gpu/s42-call*.sh, each run as .gpu/run.sh from the
# repository root after scripts/gpu-build.sh .gpu): the log to $OUT, the kernel cache and the
# fixtures' path, the synthetic 2B4T model, and `b ARGS...` for one `bitnet bench` table.
exec > "$OUT/log.txt" 2>&1
export BITNET_CACHE_DIR=$PWD/.gpu/cache BITNET_REQUIRE_GPU=1
built_at=$(cat .gpu/built_at); mkdir -p "$(dirname "$built_at")"; ln -sfn "$PWD" "$built_at"
B=.gpu/bitnet
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
$B convert --synthetic 2b4t -o /tmp/same.gguf 2>&1 | tail -1
b() { timeout 150 $B bench -m /tmp/same.gguf --device cuda -p 0 -r 2 --depth 512 -o md "$@" 2>&1 | grep -E "^\||rror" | grep -v -- '---' | grep -v 'model ' | sed -E 's/^\| bitnet[^|]*\|[^|]*\|[^|]*\|[^|]*\|[^|]*\|/|/' | cut -c1-160; }
