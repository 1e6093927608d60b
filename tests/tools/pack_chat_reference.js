// Step 2 of the reference for tests/test_pack_chat.sh (not run in CI): tokenizes the texts of
// pack_chat_reference.py with Hugging Face tokenizers (the Rust library through its Node binding, npm "tokenizers")
// and splits them as TRL 1.x does: prompt ids = encode(prompt) (with the special tokens of tokenizer(prompt) for text); completion ids = encode(prompt + completion) after
// its first len(prompt ids) ids (TRL 1.x DPO/SFT: sliced even when the prompt's ids are not a prefix, with a
// warning; counted here); standard completions encoded apart, EOS appended.
//   cd /tmp/x && npm install tokenizers@0.23.2 && python3 tests/tools/pack_chat_reference.py tests/data/pack_chat \
//     DIR... > texts.json && node tests/tools/pack_chat_reference.js texts.json DIR... > tests/data/pack_chat/reference.json
// (each DIR holds tokenizer.json.gz, as tests/data/tokenizers/<name>/ does)
// Rows with "masked" (assistant_only_loss, pack_chat_reference.py --aol): the whole text is the completion and
// "mask" marks, as transformers' return_assistant_tokens_mask does, for each generation span [a, b) (characters)
// the tokens from char_to_token(a) to char_to_token(b - 1); rows of such a kind without spans train every token.
const fs = require("fs");
const path = require("path");
const zlib = require("zlib");
const { Tokenizer } = require(require.resolve("tokenizers", { paths: [process.cwd()] }));

async function ids(tok, text, special = false) {
  return Array.from((await tok.encode(text, null, { addSpecialTokens: special })).getIds());
}

async function main() {
  const texts = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const version = JSON.parse(fs.readFileSync(require.resolve("tokenizers/package.json", { paths: [process.cwd()] }))).version;
  const out = { generator: `python3-jinja2 (transformers' setup) + npm tokenizers ${version}, TRL 1.x splitting`, tokenizers: {} };
  for (const dir of process.argv.slice(3)) {
    const name = path.basename(path.resolve(dir));
    const tok = Tokenizer.fromString(zlib.gunzipSync(fs.readFileSync(path.join(dir, "tokenizer.json.gz"))).toString("utf8"));
    const per = {};
    let mismatches = 0;
    for (const [kind, rows] of Object.entries(texts[name])) {
      per[kind] = [];
      for (const r of rows) {
        // a standard (text) prompt is tokenized as TRL 1.x's tokenizer(prompt): with the post-processor's special
        // tokens (Llama: BOS); chat renders carry their own (apply_chat_template: add_special_tokens=False)
        const std = r.eos !== undefined && r.full !== undefined;
        const p = await ids(tok, r.prompt, std);
        const fields = [p];
        if (r.masked !== undefined) {
          const enc = await tok.encode(r.masked, null, { addSpecialTokens: false });
          const all = Array.from(enc.getIds()), off = enc.getOffsets();
          const at = (c) => off.findIndex(([s, e]) => s <= c && c < e);
          const mask = all.map(() => 0);
          for (const [a, b] of r.spans) {
            if (b <= a) continue;
            const s = at(a), e = at(b - 1);
            if (s < 0) break; // transformers: a span past the tokens ends the marking
            for (let k = s; k <= (e < 0 ? all.length - 1 : e); k++) mask[k] = 1;
          }
          fields.push(all);
          per[kind].push({ fields, mask });
          continue;
        }
        if (r.full) {
          let mismatch = 0;
          for (const full of r.full) {
            const f = await ids(tok, full, std);
            // TRL warns when the prompt's ids are not the start of the whole's, and slices at their length anyway
            if (f.slice(0, p.length).join() !== p.join()) mismatch = 1;
            const comp = f.slice(p.length);
            if (r.eos !== undefined) { // standard (text) example: EOS appended when missing, as TRL does
              const eos = tok.tokenToId(r.eos);
              if (comp[comp.length - 1] !== eos) comp.push(eos);
            }
            fields.push(comp);
          }
          mismatches += mismatch; // examples, as prefopt's summary counts them
        } else {
          const eos = tok.tokenToId(r.eos);
          for (const c of r.completions) {
            const f = await ids(tok, c);
            if (f[f.length - 1] !== eos) f.push(eos);
            fields.push(f);
          }
        }
        if (kind === "sft_aol") per[kind].push({ fields, mask: fields[1].map(() => 1) });
        else per[kind].push(r.label === undefined ? { fields } : { fields, label: r.label });
      }
    }
    per.prompt_mismatches = mismatches;
    out.tokenizers[name] = per;
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}
main().catch((e) => { console.error(e); process.exit(1); });
