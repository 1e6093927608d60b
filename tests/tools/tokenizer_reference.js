// Produces tests/data/tokenizers/reference.json: the ids that Hugging Face tokenizers (the Rust library, through
// its official Node binding, npm package "tokenizers") gives for every text of corpus.json with every
// tokenizer.json.gz there. Not run in CI; CI compares prefopt against the stored file.
//   cd /tmp/x && npm install tokenizers@0.23.2 && node /path/to/tests/tools/tokenizer_reference.js /path/to/tests/data/tokenizers
const fs = require("fs");
const path = require("path");
const zlib = require("zlib");
const { Tokenizer } = require(require.resolve("tokenizers", { paths: [process.cwd()] }));

async function main() {
  const dir = process.argv[2];
  const texts = JSON.parse(fs.readFileSync(path.join(dir, "corpus.json"), "utf8")).texts;
  const version = JSON.parse(fs.readFileSync(require.resolve("tokenizers/package.json", { paths: [process.cwd()] }))).version;
  const out = { generator: `npm tokenizers ${version} (Hugging Face tokenizers, Rust), encode(text, addSpecialTokens=false)`, tokenizers: {} };
  for (const name of fs.readdirSync(dir).sort()) {
    const gz = path.join(dir, name, "tokenizer.json.gz");
    if (!fs.existsSync(gz)) continue;
    const json = zlib.gunzipSync(fs.readFileSync(gz)).toString("utf8");
    out.tokenizers[name] = { cases: await run(Tokenizer.fromString(json), texts) };
    if (name === "llama2" || name === "gpt2") {
      // Added tokens of every kind (normalized or not, special, lstrip/rstrip) on top of the file, derived the same
      // way test_tokenizer_hf.c derives them.
      const j = JSON.parse(json);
      const base = Math.max(...Object.values(j.model.vocab)) + 1;
      j.added_tokens.push(
        { id: base, content: "<tool>", single_word: false, lstrip: false, rstrip: false, normalized: true, special: false },
        { id: base + 1, content: " [SEP] ", single_word: false, lstrip: false, rstrip: false, normalized: true, special: false },
        { id: base + 2, content: "<raw>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: false },
        { id: base + 3, content: "<|sp|>", single_word: false, lstrip: true, rstrip: true, normalized: false, special: true });
      out.tokenizers[name + "_added"] = { cases: await run(Tokenizer.fromString(JSON.stringify(j)), texts) };
    }
    if (name === "llama2") {
      // The newer SentencePiece-style layout (Mistral v0.3, Llama 2 with legacy=false): no normalizer, a Metaspace
      // pre-tokenizer and decoder. Derived from the llama2 file the same way test_tokenizer_hf.c derives it.
      for (const [variant, scheme, split] of [["llama2_metaspace_first", "first", false], ["llama2_metaspace_always", "always", true]]) {
        const j = JSON.parse(json);
        j.normalizer = null;
        j.pre_tokenizer = { type: "Metaspace", replacement: "\u2581", prepend_scheme: scheme, split };
        j.decoder = { type: "Sequence", decoders: [{ type: "Metaspace", replacement: "\u2581", prepend_scheme: scheme, split }, { type: "ByteFallback" }, { type: "Fuse" }] };
        out.tokenizers[variant] = { cases: await run(Tokenizer.fromString(JSON.stringify(j)), texts) };
      }
    }
  }
  fs.writeFileSync(path.join(dir, "reference.json"), JSON.stringify(out));
}

async function run(tok, texts) {
    const cases = [];
    for (const text of texts) {
      const ids = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
      const decoded = await tok.decode(ids, false);
      const decoded_skip = await tok.decode(ids, true);
      const reencoded = (await tok.encode(decoded, null, { addSpecialTokens: false })).getIds();
      cases.push({ ids, decoded, decoded_skip, reencoded });
    }
    return cases;
}
main().catch((e) => { console.error(e); process.exit(1); });
