//! The CLIP tokenizer on untrusted files and prompts: `vocab.json` + `merges.txt` or
//! `tokenizer.json`, `special_tokens_map.json`, `tokenizer_config.json`, then a prompt. A
//! folder that is refused must be refused with an error; one that loads must give exactly
//! `max_length` ids, start token first, for any prompt.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinydiffusion::text::tokenizer::TokenizerFiles;
use tinydiffusion::text::ClipTokenizer;
use tinydiffusion_fuzz::{clip_tokenizer_sections, ClipTokenizerInput};

fuzz_target!(|data: &[u8]| {
    let ClipTokenizerInput {
        tokenizer_json,
        first,
        second,
        special_tokens_map,
        tokenizer_config,
        prompt,
    } = clip_tokenizer_sections(data);
    let files = TokenizerFiles {
        tokenizer_json: tokenizer_json.then_some(first.as_str()),
        vocab_json: (!tokenizer_json).then_some(first.as_str()),
        merges_txt: (!tokenizer_json).then_some(second.as_str()),
        special_tokens_map_json: special_tokens_map.as_deref(),
        tokenizer_config_json: tokenizer_config.as_deref(),
    };
    let Ok(tokenizer) = ClipTokenizer::from_files(files) else {
        return;
    };
    for p in [prompt.as_str(), "", "A photo of <|endoftext|> a cat!"] {
        let ids = tokenizer.encode(p);
        assert_eq!(ids.len(), tokenizer.max_length());
        assert_eq!(ids[0], tokenizer.bos_id());
    }
});
