//! Parsed documents kept for reuse, by their exact text (`payload.document_cache`). Clients send
//! the same few documents over and over, and parsing was the largest single cost of a small
//! query: 10 µs of the 45 µs the server spent on `{ serverInfo { … } }` (perf, `palisade-bench
//! overhead`), where a copy of the parsed document costs well under one.
//!
//! Only the parse is skipped. Every request still goes through the per-operation guard with the
//! configuration of the moment (text size and tokens, shape, budget), and through async-graphql's
//! validation, so a cached document is judged exactly as a fresh one, reloads included. A document
//! enters only once it parsed and passed the guard's checks of its shape.
//!
//! Bounded in entries and in bytes, the least recently used dropped first: a client sending
//! endless distinct documents only churns the cache.

use std::sync::{Arc, Mutex};

use async_graphql::parser::types::ExecutableDocument;
use hashlink::LruCache;
use prometheus::{IntCounter, IntGauge};

use crate::config::DocumentCache;
use crate::metrics::Metrics;
use crate::sync::lock;

pub struct Documents {
    cache: Mutex<Cache>,
    max_entries: usize,
    max_bytes: usize,
    /// The handles of `palisade_document_cache_lookups_total`, resolved once: a labelled lookup
    /// per operation hashes its labels.
    hits: IntCounter,
    misses: IntCounter,
    entries: IntGauge,
    bytes: IntGauge,
}

/// What a parsed document is counted at, per byte of its text: the most one took, measured with a
/// counting allocator (`{a{a{…}}}`: 253; a 51-byte query 31, 2,000 fields 106, aliases 59).
const BYTES_PER_TEXT_BYTE: usize = 256;

struct Cache {
    /// Shared, so a hit copies the document outside the lock.
    documents: LruCache<String, Arc<ExecutableDocument>>,
    /// What the documents held are counted at.
    bytes: usize,
}

fn counted(text: &str) -> usize {
    text.len().saturating_mul(BYTES_PER_TEXT_BYTE)
}

impl Documents {
    pub fn new(bounds: &DocumentCache, metrics: &Metrics) -> Self {
        let lookups = &metrics.document_cache_lookups;
        Self {
            // Unbounded here: `insert` evicts by both bounds itself.
            cache: Mutex::new(Cache {
                documents: LruCache::new_unbounded(),
                bytes: 0,
            }),
            max_entries: bounds.entries as usize,
            max_bytes: bounds.bytes.bytes(),
            hits: lookups.with_label_values(&["hit"]),
            misses: lookups.with_label_values(&["miss"]),
            entries: metrics.document_cache_entries.clone(),
            bytes: metrics.document_cache_bytes.clone(),
        }
    }

    /// A copy of the document parsed from `text`, if it is kept.
    pub fn get(&self, text: &str) -> Option<ExecutableDocument> {
        if self.max_entries == 0 {
            return None;
        }
        let found = lock(&self.cache).documents.get(text).cloned();
        match found {
            Some(document) => {
                self.hits.inc();
                Some(ExecutableDocument::clone(&document))
            }
            None => {
                self.misses.inc();
                None
            }
        }
    }

    /// Keeps `document`, parsed from `text`, dropping the least recently used to stay in bounds.
    /// A document counted at more than the whole byte bound is not kept.
    pub fn insert(&self, text: &str, document: &ExecutableDocument) {
        if self.max_entries == 0 || counted(text) > self.max_bytes {
            return;
        }
        // Copied before locking, so other connections' lookups do not wait on it.
        let document = Arc::new(document.clone());
        let mut cache = lock(&self.cache);
        if cache.documents.contains_key(text) {
            return;
        }
        cache.bytes += counted(text);
        cache.documents.insert(text.to_string(), document);
        while cache.documents.len() > self.max_entries || cache.bytes > self.max_bytes {
            let Some((evicted, _)) = cache.documents.remove_lru() else {
                break;
            };
            cache.bytes -= counted(&evicted);
        }
        self.entries.set(cache.documents.len() as i64);
        self.bytes.set(cache.bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::parser::parse_query;

    use super::*;
    use crate::config::units::ByteSize;

    fn documents(entries: u32, bytes: u64) -> (Documents, Metrics) {
        let metrics = Metrics::new("test");
        let bounds = DocumentCache {
            entries,
            bytes: ByteSize(bytes),
        };
        (Documents::new(&bounds, &metrics), metrics)
    }

    fn keep(documents: &Documents, text: &str) {
        documents.insert(text, &parse_query(text).unwrap());
    }

    #[test]
    fn the_least_recently_used_document_goes_first_when_entries_run_out() {
        let (documents, metrics) = documents(2, 1 << 20);
        keep(&documents, "{ a }");
        keep(&documents, "{ b }");
        assert!(documents.get("{ a }").is_some());
        keep(&documents, "{ c }");
        assert!(
            documents.get("{ b }").is_none(),
            "b was the least recently used"
        );
        assert!(documents.get("{ a }").is_some());
        assert!(documents.get("{ c }").is_some());
        assert_eq!(metrics.document_cache_entries.get(), 2);
        assert_eq!(metrics.document_cache_bytes.get(), 10 * 256);
    }

    #[test]
    fn the_texts_held_stay_within_the_byte_bound() {
        let (documents, metrics) = documents(100, 12 * 256);
        keep(&documents, "{ a }");
        keep(&documents, "{ bb }");
        keep(&documents, "{ ccc }");
        assert!(metrics.document_cache_bytes.get() <= 12 * 256);
        assert!(documents.get("{ ccc }").is_some());
        assert!(documents.get("{ a }").is_none());
        keep(&documents, &format!("{{ {} }}", "d".repeat(20)));
        assert!(
            documents
                .get(&format!("{{ {} }}", "d".repeat(20)))
                .is_none(),
            "too large to keep"
        );
        assert!(metrics.document_cache_bytes.get() <= 12 * 256);
    }

    #[test]
    fn zero_entries_keeps_nothing() {
        let (documents, metrics) = documents(0, 1 << 20);
        keep(&documents, "{ a }");
        assert!(documents.get("{ a }").is_none());
        assert_eq!(metrics.document_cache_entries.get(), 0);
    }
}
