//! Text front end of text-to-image pipelines (std only): the prompt becomes token ids here, and
//! the `no_std` core only ever sees those ids.

pub mod tokenizer;

pub use tokenizer::ClipTokenizer;
