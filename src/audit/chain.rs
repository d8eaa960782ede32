//! The hash chain that makes each municipality's trail tamper-evident.
//!
//! Format (version 1): an event's digest is the lowercase hex SHA-256 of the UTF-8 text
//!
//! ```text
//! renraku-audit-v1\n{chain}\n{sequence}\n{previous digest}\n{AuditEvent JSON as stored}
//! ```
//!
//! Sequence numbers start at 1 and have no gaps; the first event's predecessor digest is
//! [`GENESIS`] (64 zeros), or after pruning the digest of the last pruned event (the chain's
//! anchor). The AuditEvent carries its own sequence number and its predecessor's digest in
//! the `audit-chain` extension, so the stored JSON commits to its place. The journal
//! (`audit_log`) holds each event's link (sequence, predecessor, digest) and, on PostgreSQL
//! until the event is projected (and in databases an earlier version wrote), the JSON the
//! digest covers, which the projected resource and version rows must equal; otherwise the
//! resource row is that JSON and its version row must equal it. Changing a stored event breaks its digest or the equality; deleting one leaves a gap; inserting one
//! breaks the predecessor link of the next; truncating the tail disagrees with the chain's
//! head.
//! Someone able to rewrite the whole tail *and* the head undetected can only be caught by
//! comparing with a head digest kept elsewhere (`renraku audit verify` prints it).

use sha2::{Digest, Sha256};

/// The predecessor digest of a chain's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The digest of one event.
pub fn digest(chain: &str, sequence: i64, previous: &str, content: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("renraku-audit-v1\n{chain}\n{sequence}\n{previous}\n").as_bytes());
    hasher.update(content.as_bytes());
    hex::encode(hasher.finalize())
}

/// One stored link, as verification reads it.
#[derive(Debug, Clone)]
pub struct Link {
    pub seq: i64,
    pub event_id: String,
    pub previous: String,
    pub digest: String,
    /// The AuditEvent JSON the digest covers: the journal's copy where the journal holds one
    /// (`in_journal`), otherwise the resource row's (empty when that row is missing).
    pub content: String,
    /// Whether the journal row holds the JSON itself (PostgreSQL's links, and SQLite's
    /// written by an earlier version).
    pub in_journal: bool,
    /// Whether the AuditEvent's resource rows were written from the journal.
    pub projected: bool,
    /// The projected resource row's content (None: missing). An AuditEvent has no version
    /// row: its resource row is its one version.
    pub resource_content: Option<String>,
}

/// Where a chain starts and ends.
#[derive(Debug, Clone)]
pub struct Head {
    pub chain: String,
    pub seq: i64,
    pub digest: String,
    pub anchor_seq: i64,
    pub anchor_digest: String,
}

/// The first problem found in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub chain: String,
    /// The sequence number at which the chain stops being trustworthy.
    pub seq: i64,
    pub event_id: Option<String>,
    pub problem: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.event_id {
            Some(id) => write!(f, "chain '{}' is broken at sequence {} (AuditEvent/{id}): {}", self.chain, self.seq, self.problem),
            None => write!(f, "chain '{}' is broken at sequence {}: {}", self.chain, self.seq, self.problem),
        }
    }
}

/// Walks one chain's links in sequence order, carrying what the next link must match.
#[derive(Debug, Clone)]
pub struct Walker {
    chain: String,
    expected_seq: i64,
    expected_previous: String,
    pub checked: i64,
}

impl Walker {
    pub fn new(head: &Head) -> Walker {
        Walker {
            chain: head.chain.clone(),
            expected_seq: head.anchor_seq + 1,
            expected_previous: head.anchor_digest.clone(),
            checked: 0,
        }
    }

    fn broken(&self, seq: i64, event_id: Option<&str>, problem: impl Into<String>) -> Break {
        Break { chain: self.chain.clone(), seq, event_id: event_id.map(str::to_owned), problem: problem.into() }
    }

    /// Checks the next link.
    pub fn step(&mut self, link: &Link) -> Result<(), Break> {
        let id = Some(link.event_id.as_str());
        if link.seq != self.expected_seq {
            return Err(self.broken(
                self.expected_seq,
                None,
                format!("the event with sequence {} is missing (the next stored event has sequence {})", self.expected_seq, link.seq),
            ));
        }
        if link.previous != self.expected_previous {
            return Err(self.broken(link.seq, id, "its predecessor digest does not match the previous event's digest"));
        }
        if !link.in_journal && link.resource_content.is_none() {
            return Err(self.broken(link.seq, id, "the AuditEvent resource row is missing"));
        }
        if digest(&self.chain, link.seq, &link.previous, &link.content) != link.digest {
            return Err(self.broken(link.seq, id, "the AuditEvent does not match its digest (altered)"));
        }
        if link.projected {
            match &link.resource_content {
                None => return Err(self.broken(link.seq, id, "the AuditEvent resource row is missing")),
                Some(stored) if *stored != link.content => {
                    return Err(self.broken(link.seq, id, "the AuditEvent resource row differs from the journal (altered)"))
                }
                Some(_) => {}
            }
        }
        self.expected_seq += 1;
        self.expected_previous = link.digest.clone();
        self.checked += 1;
        Ok(())
    }

    /// Checks that the walk ended where the head says the chain ends.
    pub fn finish(&self, head: &Head) -> Result<(), Break> {
        if self.expected_seq - 1 != head.seq {
            return Err(self.broken(
                self.expected_seq,
                None,
                format!("the chain's head is at sequence {}, but the stored events end at {}", head.seq, self.expected_seq - 1),
            ));
        }
        if self.expected_previous != head.digest {
            return Err(self.broken(head.seq, None, "the last event's digest does not match the chain's head"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(contents: &[&str]) -> (Head, Vec<Link>) {
        let mut previous = GENESIS.to_owned();
        let mut links = Vec::new();
        for (index, content) in contents.iter().enumerate() {
            let seq = index as i64 + 1;
            let digest = digest("ina", seq, &previous, content);
            links.push(Link {
                seq,
                event_id: format!("e{seq}"),
                previous: previous.clone(),
                digest: digest.clone(),
                content: (*content).to_owned(),
                in_journal: true,
                projected: true,
                resource_content: Some((*content).to_owned()),
            });
            previous = digest;
        }
        let head = Head { chain: "ina".into(), seq: links.len() as i64, digest: previous, anchor_seq: 0, anchor_digest: GENESIS.into() };
        (head, links)
    }

    fn walk(head: &Head, links: &[Link]) -> Result<i64, Break> {
        let mut walker = Walker::new(head);
        for link in links {
            walker.step(link)?;
        }
        walker.finish(head)?;
        Ok(walker.checked)
    }

    #[test]
    fn each_kind_of_tampering_is_found_at_its_event() {
        let (head, links) = chain_of(&["a", "b", "c", "d"]);
        assert_eq!(walk(&head, &links), Ok(4));

        let check = |links: Vec<Link>, head: &Head, seq: i64, needle: &str| {
            let broken = walk(head, &links).expect_err("tampering is detected");
            assert_eq!(broken.seq, seq, "{broken}");
            assert!(broken.problem.contains(needle), "{broken}");
        };
        let mut altered = links.clone();
        altered[1].content = "B".into();
        check(altered, &head, 2, "altered");
        let mut projection_altered = links.clone();
        projection_altered[1].resource_content = Some("B".into());
        check(projection_altered, &head, 2, "altered");
        let mut projection_missing = links.clone();
        projection_missing[3].resource_content = None;
        check(projection_missing, &head, 4, "missing");
        let mut not_yet_projected = links.clone();
        not_yet_projected[3].projected = false;
        not_yet_projected[3].resource_content = None;
        assert_eq!(walk(&head, &not_yet_projected), Ok(4), "an event not yet projected is fine");
        // Events whose only copy is the resource row (the journal holds their link alone).
        let resource_only: Vec<Link> = links.iter().cloned().map(|link| Link { in_journal: false, ..link }).collect();
        assert_eq!(walk(&head, &resource_only), Ok(4));
        let mut resource_altered = resource_only.clone();
        resource_altered[1].content = "B".into();
        resource_altered[1].resource_content = Some("B".into());
        check(resource_altered, &head, 2, "digest");
        let mut resource_missing = resource_only.clone();
        resource_missing[2].content = String::new();
        resource_missing[2].resource_content = None;
        check(resource_missing, &head, 3, "resource row is missing");
        let mut deleted = links.clone();
        deleted.remove(1);
        check(deleted, &head, 2, "missing");
        let mut truncated = links.clone();
        truncated.pop();
        check(truncated, &head, 4, "head");
        let (_, mut inserted) = chain_of(&["a", "b", "c", "d"]);
        inserted[2].previous = digest("ina", 2, &inserted[0].digest, "x");
        check(inserted, &head, 3, "predecessor");
    }
}
