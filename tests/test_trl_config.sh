#!/usr/bin/env bash
# TRL's configuration names and the run directory's config.ini (issue 18):
#  - TRL loss_type values: the list form with loss_weights equals prefopt's NAME:W terms (bit-identical losses),
#    aot_pair / alphapo are aot_unpaired / simpo, TRL names prefopt lacks are refused by name in one line;
#  - gradient_accumulation_steps: global batch = per_device_train_batch_size x accumulation x dp, the losses of one
#    batch of that size (one rank and dp 2), a --batch-size that disagrees is refused naming the three;
#  - a job file's [common] key that no subcommand reads is an error with file:line and the closest key;
#  - config.ini keeps only the options that apply (objective, from scratch or --init, held-out data);
#  - resuming with options that change the math (loss, beta, lr, data, ...) is refused on every rank in one line
#    naming them, leaving config.ini and metrics.jsonl as they were; --allow-config-change continues and
#    metrics.jsonl says what changed; layout and logging options may change freely;
#  - eval of a run directory (or a checkpoint in one) takes the run's objective and reference by default (the eval
#    loss equals -log sigmoid(beta * margin) computed here from the per-example log-probs), options given win, and
#    without a reference the summary says what is left out and reports what needs none.
set -u
source "$(dirname "$0")/lib.sh"
P=${PREFOPT:?}
mpi_env_root
make_workdir d

$PY - <<'EOF'
import json, random
r = random.Random(3)
L = "abcdefgh"
with open("t.jsonl", "w") as f, open("u.jsonl", "w") as g:
    for i in range(64):
        p = "".join(r.choice(L) for _ in range(4))
        f.write(json.dumps({"prompt": p + ":", "chosen": p[0] * 3, "rejected": r.choice(L) * 3}) + "\n")
        g.write(json.dumps({"prompt": p + ":", "chosen": p[1] * 2, "rejected": r.choice(L) * 4}) + "\n")
EOF
"$P" pack --input t.jsonl --output t.h5 --quiet || fail=1
"$P" pack --input u.jsonl --output u.h5 --quiet || fail=1
TINY="--data t.h5 --n-layer 1 --n-embd 32 --n-head 2 --max-position 16 --seed 11 --peak-gflops 1 --lr 1e-3 --log-interval 1000"
# losses A B [tol]: the train losses of two runs agree (tol 0: bit-identical)
losses() { $PY - "$1" "$2" "${3:-0}" <<'EOF'
import json, sys
def get(p):
    return [json.loads(l)["loss"] for l in open(p) if '"loss"' in l and '"eval/' not in l]
a, b, tol = get(sys.argv[1]), get(sys.argv[2]), float(sys.argv[3])
ok = len(a) == len(b) > 0 and all(abs(x - y) <= tol * max(abs(x), 1e-12) for x, y in zip(a, b))
if not ok: print(a, b)
sys.exit(0 if ok else 1)
EOF
}
run() { local dir=$1; shift; "$P" train $TINY --run-dir "$dir" --max-steps 4 "$@" > "$dir.log" 2>&1; }

# --- loss_type values ----------------------------------------------------------------------------------------
run mpo_prefopt --loss dpo:0.8,bco_pair:0.2,sft:1
run mpo_trl --loss_type '["sigmoid", "bco_pair", "sft"]' --loss_weights '[0.8, 0.2, 1.0]'
check 'losses mpo_prefopt/metrics.jsonl mpo_trl/metrics.jsonl' "TRL's loss_type list + loss_weights == NAME:W terms"
run mpo_unweighted --loss_type '["sigmoid", "bco_pair", "sft"]'
check '! losses mpo_prefopt/metrics.jsonl mpo_unweighted/metrics.jsonl 2>/dev/null >&2' "the weights change the losses"
run aot_a --loss aot_unpaired
run aot_b --loss_type aot_pair
check 'losses aot_a/metrics.jsonl aot_b/metrics.jsonl' "aot_pair (TRL 0.27) is aot_unpaired"
run simpo_a --loss simpo --beta 2
run simpo_b --loss_type alphapo --beta 2
check 'losses simpo_a/metrics.jsonl simpo_b/metrics.jsonl' "alphapo is simpo (alpha 0)"
for name in bco grpo kto_pair; do
  run lack_$name --loss_type "$name"; rc=$?
  n=$(grep -c "prefopt: error: .*TRL's loss_type \"$name\" .*is not in prefopt" lack_$name.log)
  check '[ $rc -ne 0 ] && [ "$n" -eq 1 ] && [ $(grep -c "error" lack_$name.log) -eq 1 ]' \
        "TRL name $name refused in one line: rc $rc: $(cat lack_$name.log)"
done
run badw --loss_type '["sigmoid","sft"]' --loss_weights 1; rc=$?
check '[ $rc -ne 0 ] && grep -q "has 1 weights for the 2 losses" badw.log' "loss_weights count checked: $(tail -1 badw.log)"

# --- gradient_accumulation_steps -------------------------------------------------------------------------------
run b8 --batch-size 8
run gas --per_device_train_batch_size 2 --gradient_accumulation_steps 4
check 'grep -q "steps/epoch of 8 (micro-batch 2 x 4 accumulated x 1 replicas)" gas.log' "GAS: batch 2 x 4 x 1: $(grep ^data gas.log)"
check 'grep -qx "batch-size = 8" gas/config.ini' "config.ini records the global batch"
check 'losses b8/metrics.jsonl gas/metrics.jsonl 1e-5' "2 x 4 accumulated == one batch of 8"
run gas_b --batch-size 8 --gradient_accumulation_steps 2
check 'grep -q "(micro-batch 4 x 2 accumulated x 1 replicas)" gas_b.log' "GAS with --batch-size: micro = 8 / 2: $(grep ^data gas_b.log)"
$MPI -n 2 "$P" train $TINY --run-dir gas_dp --max-steps 4 --dp 2 --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 2 > gas_dp.log 2>&1
check 'grep -q "of 8 (micro-batch 2 x 2 accumulated x 2 replicas)" gas_dp.log' "GAS dp 2: $(grep ^data gas_dp.log)"
check 'losses b8/metrics.jsonl gas_dp/metrics.jsonl 1e-4' "2 x 2 accumulated x dp 2 == one batch of 8"
run gas_bad --batch-size 4 --micro-batch-size 2 --gradient-accumulation-steps 4; rc=$?
check '[ $rc -ne 0 ] && grep -q "batch-size 4 disagrees with --micro-batch-size (per_device_train_batch_size) 2 x --gradient-accumulation-steps 4 x 1 replicas = 8" gas_bad.log' \
      "disagreeing --batch-size refused: $(tail -1 gas_bad.log)"

# --- [common] keys ---------------------------------------------------------------------------------------------
printf '[common]\nlearning_rate = 1e-3\nmax_new_tokens = 5\n[train]\nbeta = 0.2\n' > ok.ini
"$P" train --config ok.ini --print-config > ok.txt 2>&1
check '[ $? -eq 0 ] && grep -qx "lr = 0.001" ok.txt' "[common] keys of train and of generate pass: $(head -2 ok.txt)"
printf '[common]\nseed = 3\nlearnig_rate = 1e-3\n' > typo.ini
"$P" train --config typo.ini --print-config > typo.txt 2>&1; rc=$?
check '[ $rc -eq 2 ] && [ $(wc -l < typo.txt) -eq 1 ] && grep -q "typo.ini:3: option '"'learnig_rate'"' in section \[common\] is read by no subcommand (did you mean '"'learning_rate'"'?)" typo.txt' \
      "[common] key no subcommand reads: $(cat typo.txt)"
printf 'frobnicate = 1\n[eval]\nbatch_size = 2\n' > top.ini
"$P" eval --config top.ini --print-config > top.txt 2>&1; rc=$?
check '[ $rc -eq 2 ] && grep -q "top.ini:1: option '"'frobnicate'"' at the top level is read by no subcommand" top.txt' \
      "top-level key no subcommand reads: $(cat top.txt)"

# --- config.ini: the options that apply ------------------------------------------------------------------------
has() { grep -q "^$2 = " "$1/config.ini"; }
run cfg_dpo --loss dpo
check 'has cfg_dpo loss && has cfg_dpo beta && has cfg_dpo n-layer && has cfg_dpo ref-model && has cfg_dpo f-divergence' \
      "dpo from scratch keeps loss, beta, the architecture, the reference: $(tr '\n' ' ' < cfg_dpo/config.ini)"
check '! has cfg_dpo simpo-gamma && ! has cfg_dpo desirable-weight && ! has cfg_dpo discopop-tau && ! has cfg_dpo rope-theta && ! has cfg_dpo eval-interval && ! has cfg_dpo label-smoothing && ! has cfg_dpo min-lr-ratio && ! has cfg_dpo init' \
      "dpo from scratch drops options it does not read: $(tr '\n' ' ' < cfg_dpo/config.ini)"
run cfg_simpo --loss simpo --init cfg_dpo/model.h5 --eval-data u.h5 --lr-scheduler cosine
check 'has cfg_simpo simpo-gamma && has cfg_simpo label-smoothing && has cfg_simpo init && has cfg_simpo eval-interval && has cfg_simpo min-lr-ratio' \
      "simpo from --init with eval data keeps its options: $(tr '\n' ' ' < cfg_simpo/config.ini)"
check '! has cfg_simpo ref-model && ! has cfg_simpo f-divergence && ! has cfg_simpo n-layer && ! has cfg_simpo cdpo' \
      "simpo from --init drops the reference and architecture options: $(tr '\n' ' ' < cfg_simpo/config.ini)"
check 'grep -qx "lr = 0.001" cfg_simpo/config.ini && grep -qx "beta = 0.1" cfg_simpo/config.ini' "floats as their shortest decimal"

# --- resuming with changed options -------------------------------------------------------------------------------
run res --max-steps 2 --loss dpo
cp res/config.ini res.ini.before; cp res/metrics.jsonl res.metrics.before
np=2 # the first change under two ranks (every rank prints the line), the others on one
for change in "--loss ipo" "--beta 0.2" "--lr 2e-3" "--data u.h5" "--loss_type sigmoid --learning_rate 5e-4"; do
  if [ $np -eq 2 ]; then
    $MPI -n 2 "$P" train $TINY --run-dir res --max-steps 2 --loss dpo --dp 2 $change > res_refused.log 2>&1; rc=$?
  else
    "$P" train $TINY --run-dir res --max-steps 2 --loss dpo $change > res_refused.log 2>&1; rc=$?
  fi
  key=$(set -- $change; echo "${1#--}")
  case $key in learning_rate|loss_type) key=lr ;; esac
  n=$(grep -c "prefopt: error: res/checkpoints/step-00000002.h5: resuming with options that change the run: .*$key .* -> .*--allow-config-change" res_refused.log)
  check '[ $rc -ne 0 ] && [ "$n" -eq $np ] && [ $(grep -c "error" res_refused.log) -eq $np ]' \
        "resume with $change refused on every rank ($np) naming $key (rc $rc): $(grep error res_refused.log | head -1)"
  check 'cmp -s res/config.ini res.ini.before && cmp -s res/metrics.jsonl res.metrics.before' \
        "a refused resume ($change) leaves config.ini and metrics.jsonl alone"
  np=1
done
check 'grep -q "loss dpo -> ipo" <(run res --max-steps 2 --loss ipo; cat res.log)' "the refusal says old -> new"
# layout, logging and checkpoint cadence may change; the math keys are the checkpoint's
$MPI -n 2 "$P" train $TINY --run-dir res --max-steps 2 --loss dpo --dp 2 --log-interval 1 --save-interval 5 \
    --keep-last 3 > res_ok.log 2>&1
check '[ $? -eq 0 ] && grep -q "resumed from" res_ok.log' "resume with other layout/logging options: $(tail -1 res_ok.log)"
run res --max-steps 3 --loss dpo --log-interval 1; rc=$?
check '[ $rc -eq 0 ] && grep -q "resumed from res/checkpoints/step-00000002.h5" res.log' "a longer --max-steps resumes: $(tail -1 res.log)"
run res --max-steps 4 --loss dpo --beta 0.2 --allow-config-change; rc=$?
check '[ $rc -eq 0 ] && grep -q "warning: resumed at step 3 with changed options" res.log' "--allow-config-change continues: $(tail -1 res.log)"
row=$($PY -c "
import json
rows=[json.loads(l) for l in open('res/metrics.jsonl') if 'config_change' in l]
print(len(rows), rows[0]['step'], rows[0]['config_change'])")
check '[ "$row" = "1 3 {'"'beta': {'from': '0.1', 'to': '0.2'}}"'" ]' "metrics.jsonl marks the change: $row"
check 'grep -qx "beta = 0.2" res/config.ini && grep -qx "allow-config-change = 1" res/config.ini' "config.ini holds the new values"

# --- eval takes the run's objective ---------------------------------------------------------------------------
run ev_init --max-steps 0 --epochs 0
run ev_run --init ev_init/model.h5 --loss dpo --beta 0.3 --max-steps 3
"$P" eval --model ev_run --data t.h5 --out ev1.jsonl > ev1.txt 2>&1
check '[ $? -eq 0 ] && grep -q "eval: objective 1\*dpo | beta 0.3 .*from ev_run/config.ini (beta 0.3)" ev1.txt' "eval RUN_DIR takes the run's objective: $(grep objective ev1.txt)"
dpo_loss() { $PY - "$1" "$2" <<'EOF'
import json, math, sys
beta = float(sys.argv[2])
rows = [json.loads(l) for l in open(sys.argv[1])]
def nls(z): return math.log1p(math.exp(-z)) if z > 0 else -z + math.log1p(math.exp(z))
ref = sum(nls(beta * ((r["chosen_logps"] - r["ref_chosen_logps"]) - (r["rejected_logps"] - r["ref_rejected_logps"])))
          for r in rows) / len(rows)
s = json.load(open(sys.argv[1] + ".summary.json"))
ok = s["reference"] == "ev_init/model.h5" and s["objective_from"] == "ev_run/config.ini" and \
     abs(s["eval/loss"] - ref) <= 1e-9 * abs(ref)
if not ok: print(s, ref)
sys.exit(0 if ok else 1)
EOF
}
check 'dpo_loss ev1.jsonl 0.3' "eval's loss is the run's dpo at beta 0.3 against the run's --init"
"$P" eval --model ev_run/checkpoints/step-00000003.h5 --data t.h5 --out ev2.jsonl --beta 0.1 > ev2.txt 2>&1
check '[ $? -eq 0 ] && dpo_loss ev2.jsonl 0.1' "a checkpoint of the run: its config.ini, the given --beta wins: $(grep objective ev2.txt)"
"$P" eval --model ev_init/model.h5 --data t.h5 --out ev3.jsonl > ev3.txt 2>&1
check '[ $? -eq 0 ] && grep -q "left out: eval/loss, eval/rewards/\* (dpo reads reference log-probs): no reference" ev3.txt' \
      "no reference: eval says what it leaves out: $(grep left ev3.txt)"
check "$PY -c \"
import json,sys
s=json.load(open('ev3.jsonl.summary.json')); r=[json.loads(l) for l in open('ev3.jsonl')]
m=sum(x['chosen_logps'] for x in r)/len(r)
sys.exit(not ('no reference' in s['left_out'] and 'eval/loss' not in s and abs(s['eval/logps/chosen']-m) <= 1e-9*abs(m)))\"" \
      "the summary names what is left out and reports the mean log-probs"

finish test_trl_config
