#!/bin/bash
# Llama-3.2-1B slice (2 of 16 layers, vocab 32000), 1 pair x [512|256|256], fp32 and bf16 interleaved, bf16
# with the attention's block products in bf16; run from the checkout root: perf/results/bf16_attn_quiet/llama1b/run.sh
O=perf/results/bf16_attn_quiet/llama1b
for r in 1 2 3; do
  for prec in fp32 bf16; do
    echo "[$(date +%T) load $(cut -d' ' -f1 /proc/loadavg)] rep $r $prec" >&2
    BLIS_NUM_THREADS=2 OMP_NUM_THREADS=2 build/prefopt bench --shape llama-1b --n-layer 2 --vocab 32000 --pairs 1 \
      --prompt-len 512 --chosen-len 256 --rejected-len 256 --steps 3 --warmup 1 --table=0 --precision $prec \
      > $O/$prec.$r.log 2>&1
    grep '^{' $O/$prec.$r.log >> $O/$prec.jsonl
  done
done
echo done >&2
