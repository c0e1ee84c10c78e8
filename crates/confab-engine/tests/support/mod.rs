pub mod echo_corpus;
