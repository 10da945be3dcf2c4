#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang (ASan + UBSan) into build-fuzz/
# and runs each one for a bounded time on a copy of its seed corpus.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   build, then fuzz (default: 10 s each,
#                                                       every target)
#   scripts/fuzz.sh --build                             only build
#   scripts/fuzz.sh --make-corpus                       rewrite the generated seed corpora
#                                                       (tests/fuzz/make_corpus.c)
#
# Targets: tests/fuzz/fuzz_TARGET.c -> build-fuzz/fuzz_TARGET. Each run starts from
# tests/fuzz/corpus/TARGET/ (copied to build-fuzz/run/TARGET/corpus, so the committed corpus
# never grows) plus tests/fuzz/crashes/TARGET/ (reproducers of crashes found earlier, kept as
# regression inputs) and tests/fuzz/dict/TARGET.dict when present. It prints one line per
# target, "fuzz TARGET: ok (N runs, R/s)" or the crash with its reproducer and stack trace,
# and last "fuzz: N passed, N failed" (also written to build-fuzz/summary, which
# scripts/test.sh adds to its own count: one test per target). A target passes when it ran
# its whole time without a crash, leak, timeout (10 s per input) or out-of-memory (2 GiB);
# a target that does not build fails. Exit status 0 only when every target passed.
#
# Reproduce a crash: build-fuzz/fuzz_TARGET FILE (PMX_FUZZ_VERBOSE=1 shows the output that
# the config targets hide). Needs what scripts/deps.sh installs (clang, libclang-rt, ninja,
# protoc-c, nanopb, pkg-config and the -dev packages); nothing else.
set -euo pipefail

usage="usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...] | --build | --make-corpus"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
out=$root/build-fuzz
gen=$out/gen

mode=fuzz secs=10 targets=()
for arg in "$@"; do
  case $arg in
    --build) mode=build ;;
    --make-corpus) mode=corpus ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option '$arg' ($usage)" >&2; exit 2 ;;
    *)
      if [[ $arg =~ ^[0-9]+$ && ! -f tests/fuzz/fuzz_$arg.c ]] && ((${#targets[@]} == 0)); then
        secs=$arg
      elif [[ -f tests/fuzz/fuzz_$arg.c ]]; then
        targets+=("$arg")
      else
        echo "fuzz.sh: no target '$arg' (tests/fuzz/fuzz_$arg.c) ($usage)" >&2
        exit 2
      fi ;;
  esac
done
if ((${#targets[@]} == 0)); then
  # Every target, in a fixed order; fuzz_safetensors.c joins when it exists.
  for f in tests/fuzz/fuzz_*.c; do
    [[ -e $f ]] || continue
    t=${f#tests/fuzz/fuzz_}
    targets+=("${t%.c}")
  done
fi

passed=0 failed=0
mkdir -p "$out"
# The last line, also kept in build-fuzz/summary for scripts/test.sh to add up.
summary() {
  local line="fuzz: $passed passed, $failed failed"
  echo "$line"
  echo "$line" >"$out/summary"
}
fail_all() { # MESSAGE: nothing can be built; every target fails
  echo "fuzz.sh: $1" >&2
  failed=${#targets[@]}
  summary
  exit 1
}

[[ $root != *[[:space:]]* ]] || fail_all "the checkout path contains whitespace: $root"
nanopb_gen=$(command -v nanopb_generator.py || command -v nanopb_generator || true)
for tool in clang ninja protoc-c pkg-config ar; do
  command -v "$tool" >/dev/null 2>&1 || fail_all "$tool not found (run scripts/deps.sh)"
done
[[ -n $nanopb_gen ]] || fail_all "nanopb_generator.py not found (run scripts/deps.sh)"
pkgs_cflags=$(pkg-config --cflags libprotobuf-c libzstd libxxhash) ||
  fail_all "pkg-config: protobuf-c, zstd or xxhash development files missing"
pkgs_libs=$(pkg-config --libs libprotobuf-c libzstd libxxhash)
# jansson: TF_CONFIG (common/launch, in every target through server/config.c) and the
# safetensors checkpoint reader.
jansson_cflags=$(pkg-config --cflags jansson 2>/dev/null || true)
jansson_libs=$(pkg-config --libs jansson 2>/dev/null || echo -ljansson)

# ---- build.ninja -----------------------------------------------------------------------
# The paramex sources every target may use (the archive lets each link only what it needs),
# and the other sources of common/ (new modules such as the safetensors reader) in a second
# archive, so that one that does not compile breaks only the targets that link it.
core_src=(
  common/util/log.c common/util/str.c common/util/clock.c common/util/flags.c common/util/mem.c
  common/util/taskpool.c common/util/scratch.c common/util/bufpool.c
  common/codec/checksum.c common/codec/initializer.c common/codec/dtype.c
  common/codec/transform.c common/codec/zstdframe.c common/codec/payload.c
  common/wire/chunk_msg.c common/launch/place.c common/launch/tf_config.c server/lr_schedule.c server/config.c
)
extra_src=()
for f in common/util/*.c common/codec/*.c common/wire/*.c common/format/*.c; do
  [[ " ${core_src[*]} " == *" $f "* ]] || extra_src+=("$f")
done
# Targets that need the extra archive.
needs_extra=" safetensors "

obj() { local p=${1#"$root"/}; p=${p//\//_}; echo "obj/${p%.c}.o"; }

mkdir -p "$out" "$gen"
echo '*' >"$out/.gitignore" # like meson's build directories: nothing here is committed
ninja_file=$out/build.ninja.new
{
  cat <<EOF
# Generated by scripts/fuzz.sh; edits are overwritten.
ninja_required_version = 1.5
cc = clang
san = -fsanitize=address,undefined -fno-sanitize-recover=all
cflags = -std=c11 -D_GNU_SOURCE -ffp-contract=off -g -O1 -fno-omit-frame-pointer \$
  -fsanitize=fuzzer-no-link \$san -Wall -Wextra -Wno-unused-parameter \$
  -I$root/common -I$root/server -I$root/tests/fuzz -I$gen $pkgs_cflags $jansson_cflags
libs = $pkgs_libs $jansson_libs -lprotobuf-nanopb -lm -lpthread

rule cc
  command = \$cc -MMD -MF \$out.d \$cflags -c \$in -o \$out
  depfile = \$out.d
  deps = gcc
  description = CC \$out
rule ar
  command = rm -f \$out && ar crs \$out \$in
  description = AR \$out
rule link_fuzzer
  command = \$cc -fsanitize=fuzzer \$san \$in -o \$out \$libs
  description = LINK \$out
rule link_tool
  command = \$cc \$san \$in -o \$out \$libs
  description = LINK \$out
rule protoc_c
  command = protoc-c --proto_path=$root/proto --c_out=$gen \$in
  description = PROTOC-C \$in
rule nanopb
  command = $nanopb_gen --quiet -I $root/proto -D $gen \$in
  description = NANOPB \$in
rule msglist
  command = sed -n \$
    's/^extern const ProtobufCMessageDescriptor \([a-z0-9_]*\)__descriptor;\$\$/X(\1)/p' \$
    \$in > \$out
  description = GEN \$out

build $gen/paramex.pb-c.c $gen/paramex.pb-c.h $gen/health.pb-c.c $gen/health.pb-c.h: \$
  protoc_c $root/proto/paramex.proto $root/proto/health.proto
build $gen/paramex.pb.c $gen/paramex.pb.h: nanopb $root/proto/paramex.proto
build $gen/fuzz_proto_messages.h: msglist $gen/paramex.pb-c.h $gen/health.pb-c.h
EOF
  gen_hdrs="$gen/paramex.pb-c.h $gen/health.pb-c.h $gen/paramex.pb.h $gen/fuzz_proto_messages.h"
  core_objs=() extra_objs=()
  for s in "${core_src[@]}" "$gen/paramex.pb-c.c" "$gen/health.pb-c.c" "$gen/paramex.pb.c"; do
    [[ $s == /* ]] || s=$root/$s
    echo "build $(obj "$s"): cc $s || $gen_hdrs"
    core_objs+=("$(obj "$s")")
  done
  for s in "${extra_src[@]}"; do
    echo "build $(obj "$root/$s"): cc $root/$s || $gen_hdrs"
    extra_objs+=("$(obj "$root/$s")")
  done
  echo "build libcore.a: ar ${core_objs[*]}"
  echo "build libextra.a: ar ${extra_objs[*]}"
  for f in tests/fuzz/fuzz_*.c; do
    [[ -e $f ]] || continue
    t=${f#tests/fuzz/fuzz_}
    t=${t%.c}
    o=$(obj "$root/$f")
    echo "build $o: cc $root/$f || $gen_hdrs"
    if [[ $needs_extra == *" $t "* ]]; then
      echo "build fuzz_$t: link_fuzzer $o libextra.a libcore.a"
    else
      echo "build fuzz_$t: link_fuzzer $o libcore.a"
    fi
  done
  o=$(obj "$root/tests/fuzz/make_corpus.c")
  echo "build $o: cc $root/tests/fuzz/make_corpus.c || $gen_hdrs"
  echo "build make_corpus: link_tool $o libcore.a"
} >"$ninja_file"
# Replace only when changed, so that ninja does not rebuild for nothing.
if cmp -s "$ninja_file" "$out/build.ninja"; then
  rm -f "$ninja_file"
else
  mv "$ninja_file" "$out/build.ninja"
fi

if [[ $mode == corpus ]]; then
  ninja -C "$out" make_corpus && "$out/make_corpus" "$root/tests/fuzz/corpus"
  exit
fi

# ---- build and run ---------------------------------------------------------------------
[[ $mode == fuzz ]] && echo "=== fuzz: build-fuzz, ${#targets[@]} targets, $secs s each ==="
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
for t in "${targets[@]}"; do
  if ! ninja -C "$out" "fuzz_$t" >"$out/build-$t.log" 2>&1; then
    echo "fuzz $t: BUILD FAILED (log: build-fuzz/build-$t.log)"
    tail -n 30 "$out/build-$t.log" >&2
    failed=$((failed + 1))
    continue
  fi
  [[ $mode == build ]] && { passed=$((passed + 1)); continue; }

  work=$out/run/$t
  rm -rf "$work"
  mkdir -p "$work/corpus"
  if [[ -d tests/fuzz/corpus/$t ]]; then cp -R "tests/fuzz/corpus/$t/." "$work/corpus/"; fi
  inputs=("$work/corpus")
  [[ -d tests/fuzz/crashes/$t ]] && inputs+=("$root/tests/fuzz/crashes/$t")
  opts=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$work/")
  [[ -f tests/fuzz/dict/$t.dict ]] && opts+=(-dict="$root/tests/fuzz/dict/$t.dict")
  rc=0
  timeout --kill-after=10 $((secs + 120)) "$out/fuzz_$t" "${opts[@]}" "${inputs[@]}" \
    >"$work/log" 2>&1 || rc=$?
  if ((rc == 0)); then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -n 1)
    runs=${runs:-0}
    echo "fuzz $t: ok ($runs runs, $((runs / (secs > 0 ? secs : 1)))/s)"
    passed=$((passed + 1))
    continue
  fi
  failed=$((failed + 1))
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$work/log" | tail -n 1)
  if ((rc == 124 || rc == 137)); then
    echo "fuzz $t: HUNG (killed after $((secs + 120)) s; log: ${work#"$root"/}/log)"
  elif [[ -n $artifact ]]; then
    echo "fuzz $t: CRASH (reproducer: ${artifact#"$root"/}; log: ${work#"$root"/}/log)"
    echo "  reproduce: build-fuzz/fuzz_$t ${artifact#"$root"/}"
  else
    echo "fuzz $t: FAILED (exit $rc, no reproducer written; log: ${work#"$root"/}/log)"
  fi
  # The report: from the sanitizer's or libFuzzer's first error line on.
  awk '/^==[0-9]+==|runtime error:|fuzz invariant failed|ERROR: libFuzzer|deadly signal/ {s=1} s' \
    "$work/log" | grep -v '^#[0-9]*[[:space:]]*\(NEW\|REDUCE\|pulse\|INITED\|READ\)' |
    head -n 80 >&2
done

summary
((failed == 0))
