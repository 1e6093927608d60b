#!/usr/bin/env bash
# HF interop: tiny HF directories written by an independent numpy writer (tests/tools/make_tiny_hf.py) in
# fp32/fp16/bf16, single-file and sharded, for GPT-2, Llama, Mistral and Qwen2; import on 1 and 3 ranks checked
# tensor by tensor (and checksum by checksum) by tests/tools/check_hf_import.py; import -> export -> import is
# bit-identical; bad inputs fail with a message naming the tensor or key.
set -u
source "$(dirname "$0")/lib.sh"
B=$1
T=$PREFOPT_SOURCE_DIR/tests/tools
requires_python_h5py
make_workdir W "$B/test_hf.XXXXXX"

n=0
for spec in "gpt2 f32 1" "gpt2 f16 2 --no-prefix" "gpt2 bf16 1" "llama f32 1" "llama bf16 3" "llama f16 1 --tie" \
            "mistral bf16 2" "qwen2 f16 1 --tie" "qwen2 f32 2" \
            "qwen3 f32 1" "olmo2 f16 2" "gemma2 f32 1 --tie" "gemma3_text bf16 2 --tie" "phi3 f32 1" \
            "smollm3 f32 1 --tie"; do
  set -- $spec
  arch=$1 dt=$2 shards=$3; shift 3
  n=$((n + 1)); d=m$n
  $PY "$T/make_tiny_hf.py" $d/hf --arch $arch --dtype $dt --shards $shards --seed $n "$@" || bad "generator $spec"
  np=$(( n % 2 == 0 ? 3 : 1 ))
  $MPI -n $np "$PREFOPT" import --hf $d/hf --out $d/a.h5 > /dev/null || { bad "import $spec on $np ranks"; continue; }
  $PY "$T/check_hf_import.py" $d/hf $d/a.h5 || bad "check $spec"
  "$PREFOPT" export --model $d/a.h5 --hf $d/hf2 > /dev/null || { bad "export $spec"; continue; }
  # every key of the original config comes back with its value (sliding_window is unused in Qwen2 without
  # use_sliding_window), and the weights are declared float32
  $PY - "$d/hf/config.json" "$d/hf2/config.json" <<'PYEOF' || bad "exported config.json differs: $spec"
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
bad = [k for k in a if k not in ("torch_dtype", "sliding_window") and b.get(k, "<missing>") != a[k]]
if bad or b["torch_dtype"] != "float32":
    sys.exit("keys differ: " + ", ".join(f"{k}: {a[k]!r} -> {b.get(k, '<missing>')!r}" for k in bad))
PYEOF
  cmp -s $d/hf/tokenizer.json $d/hf2/tokenizer.json || bad "tokenizer.json not carried through $spec"
  $MPI -n 2 "$PREFOPT" import --hf $d/hf2 --out $d/b.h5 > /dev/null || { bad "re-import $spec"; continue; }
  $PY "$T/check_hf_import.py" $d/hf2 $d/b.h5 > /dev/null || bad "check re-import $spec"
  h5diff $d/a.h5 $d/b.h5 /model /model > /dev/null || bad "import -> export -> import not bit-identical: $spec"
  "$PREFOPT" export --model $d/b.h5 --hf $d/hf3 > /dev/null && cmp -s $d/hf2/model.safetensors $d/hf3/model.safetensors \
    || bad "second export differs: $spec"
  echo "ok $spec (import on $np ranks)"
done

# errors: exit 1 and one line naming the tensor or key, identical on every rank
expect_err() { # expect_err "pattern" generator-args...
  local pat=$1; shift
  rm -rf bad; $PY "$T/make_tiny_hf.py" bad "$@"
  out=$($MPI -n 2 "$PREFOPT" import --hf bad --out bad.h5 2>&1); rc=$?
  [ $rc -ne 0 ] || bad "no error for: $*"
  [ "$(echo "$out" | grep -c -F "prefopt: error: $pat")" = 2 ] || bad "expected '$pat' from both ranks for: $*; got: $out"
  [ ! -e bad.h5 ] || bad "bad.h5 left behind for: $*"
}
expect_err "model.safetensors: tensor for 'layers.1.mlp.up_proj.weight' missing" --arch llama --drop model.layers.1.mlp.up_proj.weight
expect_err "model.safetensors: tensor 'transformer.h.1.mlp.c_fc.weight': shape [17,64] expected [16,64]" --arch gpt2 --bad-shape transformer.h.1.mlp.c_fc.weight
expect_err "model.safetensors: truncated: tensor 'transformer.ln_f.weight'" --arch gpt2 --truncate
expect_err "model-00002-of-00002.safetensors: truncated: tensor" --arch llama --shards 2 --truncate
expect_err "config.json: model_type 'gptj' is not supported" --arch llama --set-config 'model_type="gptj"'
expect_err "config.json: key 'rope_scaling' = {\"type\":\"dynamic\",\"factor\":2}: RoPE scaling type 'dynamic' is not supported" --arch llama --set-config 'rope_scaling={"type":"dynamic","factor":2.0}'
# issue 20: whatever a config asks for that prefopt does not implement is refused by key and value
expect_err "config.json: key 'quantization_config' = {\"quant_method\":\"gptq\"} is not supported for model_type 'llama' (prefopt does not implement it)" --arch llama --set-config 'quantization_config={"quant_method":"gptq"}'
expect_err "config.json: key 'use_sliding_window' = false is not supported for model_type 'llama'" --arch qwen2 --set-config 'model_type="llama"'
expect_err "config.json: key 'mlp_bias' = true is not supported" --arch llama --set-config 'mlp_bias=true'
expect_err "config.json: key 'rope_scaling' = {\"type\":\"longrope\",\"long_factor\":[1],\"short_factor\":[1]}: RoPE scaling type 'longrope' is not supported (null, default, linear, llama3 are); Phi-3's long-context su/longrope is not implemented" --arch phi3 --set-config 'rope_scaling={"type":"longrope","long_factor":[1],"short_factor":[1]}'
expect_err "config.json: key 'use_bidirectional_attention' = true is not supported (prefopt's attention is causal)" --arch gemma3_text --tie --set-config 'use_bidirectional_attention=true'
expect_err "config.json: key 'hidden_activation' is 'gelu'; only gelu_pytorch_tanh is supported for gemma2" --arch gemma2 --tie --set-config 'hidden_activation="gelu"'
expect_err "config.json: key 'layer_types' entry 1 = \"chunked_attention\" is not supported (sliding_attention, full_attention are)" --arch qwen3 --set-config 'layer_types=["full_attention","chunked_attention"]'
expect_err "config.json: key 'no_rope_layers' is not a list of 2 flags" --arch smollm3 --tie --set-config 'no_rope_layers=[1]'
expect_err "config.json: key 'partial_rotary_factor' = 0.4 gives 3 rotary features of 8" --arch phi3 --set-config 'partial_rotary_factor=0.4'
expect_err "model.safetensors: tensor 'model.layers.0.self_attn.qkv_proj.weight': shape [33,16] expected [32,16]" --arch phi3 --bad-shape model.layers.0.self_attn.qkv_proj.weight
expect_err "config.json: key 'hidden_act' is 'gelu'" --arch llama --set-config 'hidden_act="gelu"'
expect_err "config.json: key 'attention_bias' = true is not supported" --arch llama --set-config 'attention_bias=true'
expect_err "config.json: key 'tie_word_embeddings' = false is not supported for gpt2" --arch gpt2 --set-config 'tie_word_embeddings=false'
expect_err "config.json: key 'num_hidden_layers' missing" --arch llama --set-config 'num_hidden_layers=null'
expect_err "model.safetensors: tensor for 'h.2.ln_1.weight' missing" --arch gpt2 --set-config 'n_layer=3'
expect_err "model.safetensors: tensor 'transformer.h.1.ln_1.weight' is not part of this gpt2 model (config.json says 1 layers)" --arch gpt2 --set-config 'n_layer=1'
expect_err "model.safetensors: tensor 'model.layers.0.self_attn.q_proj.bias' is not part of this mistral model" --arch qwen2 --set-config 'model_type="mistral"'

# issue 18: the tokenizer's side files travel import -> model file -> export (tokenizer_config.json with the chat
# template, special_tokens_map.json, generation_config.json with its eos list), into a directory whose parents do
# not exist yet, with no temporary file left; a model imported without them exports a generation_config.json
# holding its config's ids
d=side
$PY "$T/make_tiny_hf.py" $d/hf --arch llama --dtype f32 --shards 1 --seed 7 || bad "generator side"
cp "$PREFOPT_SOURCE_DIR/tests/data/chat_templates/llama3_1_instruct.json" $d/hf/tokenizer_config.json
printf '{"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}\n' > $d/hf/special_tokens_map.json
printf '{"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}\n' > $d/hf/generation_config.json
"$PREFOPT" import --hf $d/hf --out $d/a.h5 > /dev/null || bad "import with side files"
"$PREFOPT" export --model $d/a.h5 --hf $d/deep/er/out > /dev/null || bad "export into missing parent folders"
for f in tokenizer_config.json special_tokens_map.json generation_config.json tokenizer.json; do
  cmp -s $d/hf/$f $d/deep/er/out/$f || bad "$f not carried through import -> export"
done
ls $d/deep/er/out | grep -q tmp && bad "export left a temporary file: $(ls $d/deep/er/out)"
"$PREFOPT" export --model m1/a.h5 --hf $d/plain > /dev/null || bad "export without side files"
$PY - m1/hf/config.json $d/plain/generation_config.json <<'PYEOF' || bad "synthesized generation_config.json"
import json, sys
c, g = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
for k in ("bos_token_id", "eos_token_id"):
    if k in c and c[k] is not None and g.get(k) != c[k]:
        sys.exit(f"{k}: config {c[k]}, generation_config {g.get(k)}")
PYEOF
# an eos list in config.json (Llama-3.1) without a generation_config.json: kept as one, every id
$PY "$T/make_tiny_hf.py" $d/hf4 --arch llama --dtype f32 --shards 1 --seed 8 --set-config 'eos_token_id=[2, 3, 1]' || bad "generator eos list"
"$PREFOPT" import --hf $d/hf4 --out $d/e.h5 > /dev/null && "$PREFOPT" export --model $d/e.h5 --hf $d/e > /dev/null || bad "eos list import/export"
$PY -c "import json,sys; g=json.load(open('$d/e/generation_config.json')); sys.exit(0 if g['eos_token_id'] == [2, 3, 1] else 1)" ||
  bad "the eos list of config.json is not in the exported generation_config.json: $(cat $d/e/generation_config.json)"
[ $fail = 0 ] && echo "ok side files (tokenizer_config, special_tokens_map, generation_config) carried; parents created; eos list kept"

# a truncated model file
head -c 30000 m1/a.h5 > trunc.h5
out=$("$PREFOPT" export --model trunc.h5 --hf trunc 2>&1) && bad "export of a truncated file succeeded"
echo "$out" | grep -q "trunc.h5: cannot open as HDF5 (missing, truncated" || bad "truncated export message: $out"

# damaged model files (edited with h5py): a missing tensor, a wrong shape, an unknown architecture
bad_model() { # bad_model "expected message" python-statements-on-f
  cp m1/a.h5 dmg.h5
  $PY -c "import h5py, numpy as np; f = h5py.File('dmg.h5', 'r+'); $1; f.close()"
  out=$("$PREFOPT" export --model dmg.h5 --hf dmg 2>&1) && bad "export of a damaged file succeeded ($1)"
  echo "$out" | grep -q -F "$2" || bad "damaged model ($1): expected '$2', got: $out"
}
bad_model "del f['model/h.mlp.c_fc.weight']" "dmg.h5: tensor 'h.0.mlp.c_fc.weight' missing"
bad_model "del f['model/wpe']; f['model/wpe'] = np.zeros((31, 16), np.float32)" "dmg.h5: tensor 'wpe': dataset shape [31,16] does not hold [32,16]"
bad_model "f.attrs['arch'] = np.bytes_('bert')" "dmg.h5: attribute 'arch' missing or unknown ('bert')"
bad_model "del f.attrs['hidden_size']" "dmg.h5: attribute 'hidden_size' missing"

# a model file that is not one
echo "not hdf5" > junk.h5
out=$("$PREFOPT" export --model junk.h5 --hf junk 2>&1) && bad "export of junk succeeded"
echo "$out" | grep -q "junk.h5: cannot open as HDF5" || bad "junk export message: $out"
exit $fail
