#!/usr/bin/env bash
# The kernel lab's figures (qemu TCG with Debian's kernel, as .ci/run sets it up): thin-pool
# change tracking against a full read and a digest comparison on one thin volume; reading an
# LVM volume through a classic snapshot against reading it directly; an entire computer's
# backup, bare-metal restore and boot. Every figure is measured inside the emulated guest:
# compare the rows of one run with each other, not with the host's figures.
#
#   BULWARK_LAB_KERNEL=... bench/lab.sh         # a 1024 MiB thin volume, a 512 MiB classic one
#   BULWARK_LAB_KERNEL=... bench/lab.sh 2048 1024
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BULWARK_LAB_KERNEL:?names the unpacked Debian kernel package (.ci/run unpacks one)}"
export BULWARK_LAB_THIN_MIB=${1:-1024} BULWARK_LAB_FIGURE_MIB=${2:-512}
figures='^(thin tracking|digest comparison|classic snapshot|entire-computer|bare-metal|the restored|the installed)'
cargo test -q -p bulwark --test lvm_lab -- --include-ignored --nocapture --test-threads 1 \
  thin_incremental lab_figures 2>&1 | grep -E "$figures"
cargo test -q -p bulwark --test managed_lab -- --nocapture entire_computer 2>&1 | grep -E "$figures"
