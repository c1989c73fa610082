//! [`ResourceMap`]: the resources of one type by name, as a sorted map whose copies share
//! structure, so that a snapshot that changes one resource out of 10,000 copies a few hundred
//! pointers and one chunk of entries instead of the whole map.
//!
//! The entries live in sorted chunks of at most [`MAX_CHUNK`] entries, each behind an `Arc`.
//! Cloning the map clones the list of chunk pointers; changing an entry copies its chunk if
//! another map shares it (`Arc::make_mut`), so a held snapshot never changes. Iteration is
//! in name order, like the `BTreeMap` it replaces (`/config_dump` lists resources by name).
//!
//! Measured with `myelin-xds-scale` (benches/RESULTS.md): with a `BTreeMap` copied per
//! update, applying one `ClusterLoadAssignment` out of 10,000 took 4.6 ms, 150 times the
//! resource's decoding, nearly all of it copying and then freeing 10,000 names and versions.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Entries per chunk at most; a chunk that grows past it is split in two halves.
pub const MAX_CHUNK: usize = 128;

/// A sorted map from resource name to `V` whose clones share unchanged chunks.
pub struct ResourceMap<V> {
    /// Sorted, none empty, the last name of each below the first of the next.
    chunks: Vec<Arc<Vec<(String, V)>>>,
    len: usize,
}

impl<V> Clone for ResourceMap<V> {
    fn clone(&self) -> Self {
        ResourceMap {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<V> Default for ResourceMap<V> {
    fn default() -> Self {
        ResourceMap {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for ResourceMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> ResourceMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk that holds `name` if anything does: the first whose last name is not below
    /// it.
    fn chunk_of(&self, name: &str) -> usize {
        self.chunks
            .partition_point(|c| c.last().expect("chunks are never empty").0.as_str() < name)
    }

    fn find(&self, name: &str) -> Option<(usize, usize)> {
        let c = self.chunk_of(name);
        let chunk = self.chunks.get(c)?;
        let i = chunk.binary_search_by(|(k, _)| k.as_str().cmp(name)).ok()?;
        Some((c, i))
    }

    /// The entry named `name`.
    pub fn get<Q: Borrow<str> + ?Sized>(&self, name: &Q) -> Option<&V> {
        self.find(name.borrow()).map(|(c, i)| &self.chunks[c][i].1)
    }

    /// Whether `name` is there.
    pub fn contains_key<Q: Borrow<str> + ?Sized>(&self, name: &Q) -> bool {
        self.find(name.borrow()).is_some()
    }

    /// Every entry in name order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            chunks: self.chunks.iter(),
            current: [].iter(),
            left: self.len,
        }
    }

    /// Every name in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Every value in name order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// Whether `other` is this map or a clone of it with no change since (every chunk
    /// shared): true means equal, false means nothing.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        self.len == other.len
            && self.chunks.len() == other.chunks.len()
            && self
                .chunks
                .iter()
                .zip(&other.chunks)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl<V: Clone> ResourceMap<V> {
    /// The entry named `name`, to change in place (copies its chunk if shared).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        let (c, i) = self.find(name)?;
        Some(&mut Arc::make_mut(&mut self.chunks[c])[i].1)
    }

    /// Adds or replaces `name`; returns the value it replaces.
    pub fn insert(&mut self, name: String, value: V) -> Option<V> {
        if self.chunks.is_empty() {
            self.chunks.push(Arc::new(vec![(name, value)]));
            self.len = 1;
            return None;
        }
        // Past the last name: into the last chunk.
        let c = self.chunk_of(&name).min(self.chunks.len() - 1);
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        match chunk.binary_search_by(|(k, _)| k.as_str().cmp(&name)) {
            Ok(i) => Some(std::mem::replace(&mut chunk[i].1, value)),
            Err(i) => {
                chunk.insert(i, (name, value));
                self.len += 1;
                if chunk.len() > MAX_CHUNK {
                    let upper = chunk.split_off(chunk.len() / 2);
                    self.chunks.insert(c + 1, Arc::new(upper));
                }
                None
            }
        }
    }

    /// Removes `name`; returns its value.
    pub fn remove(&mut self, name: &str) -> Option<V> {
        let (c, i) = self.find(name)?;
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        let (_, v) = chunk.remove(i);
        if chunk.is_empty() {
            self.chunks.remove(c);
        }
        self.len -= 1;
        Some(v)
    }
}

impl<V, Q: Borrow<str> + ?Sized> std::ops::Index<&Q> for ResourceMap<V> {
    type Output = V;

    /// The entry named `name`; panics if there is none (as `BTreeMap` does).
    fn index(&self, name: &Q) -> &V {
        self.get(name).expect("no entry with that name")
    }
}

impl<V: Clone> FromIterator<(String, V)> for ResourceMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut m = ResourceMap::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

/// [`ResourceMap::iter`].
#[derive(Debug)]
pub struct Iter<'a, V> {
    chunks: std::slice::Iter<'a, Arc<Vec<(String, V)>>>,
    current: std::slice::Iter<'a, (String, V)>,
    left: usize,
}

impl<V> Clone for Iter<'_, V> {
    fn clone(&self) -> Self {
        Iter {
            chunks: self.chunks.clone(),
            current: self.current.clone(),
            left: self.left,
        }
    }
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a String, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((k, v)) = self.current.next() {
                self.left -= 1;
                return Some((k, v));
            }
            self.current = self.chunks.next()?.iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<V> ExactSizeIterator for Iter<'_, V> {}

impl<'a, V> IntoIterator for &'a ResourceMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A deterministic shuffle of 0..n (multiplicative hashing; n a power of two).
    fn shuffled(n: u32) -> Vec<u32> {
        (0..n).map(|i| i.wrapping_mul(2_654_435_761) % n).collect()
    }

    fn check(m: &ResourceMap<u32>, model: &BTreeMap<String, u32>) {
        assert_eq!(m.len(), model.len());
        assert_eq!(m.is_empty(), model.is_empty());
        let got: Vec<_> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(got, want);
        assert_eq!(m.iter().len(), model.len());
        for (k, v) in model {
            assert_eq!(m.get(k.as_str()), Some(v), "{k}");
        }
        for c in &m.chunks {
            assert!(!c.is_empty() && c.len() <= MAX_CHUNK);
        }
    }

    #[test]
    fn behaves_like_a_btreemap() {
        let mut m = ResourceMap::new();
        let mut model = BTreeMap::new();
        assert_eq!(m.get("x"), None);
        assert_eq!(m.remove("x"), None);
        for i in shuffled(1024) {
            let k = format!("k{i:05}");
            assert_eq!(m.insert(k.clone(), i), model.insert(k, i));
        }
        check(&m, &model);
        assert!(m.chunks.len() > 8, "{} chunks", m.chunks.len());
        // Replace, get_mut, remove (also whole chunks), names past both ends.
        assert_eq!(m.insert("k00007".into(), 70), Some(7));
        model.insert("k00007".into(), 70);
        *m.get_mut("k00008").unwrap() = 80;
        *model.get_mut("k00008").unwrap() = 80;
        assert!(m.get_mut("nope").is_none());
        for i in shuffled(1024)
            .into_iter()
            .filter(|i| i % 3 != 0 || *i < 300)
        {
            let k = format!("k{i:05}");
            assert_eq!(m.remove(&k), model.remove(&k), "{k}");
        }
        check(&m, &model);
        for k in ["a", "zzz", "k00301x"] {
            assert_eq!(m.insert(k.into(), 1), model.insert(k.into(), 1));
        }
        check(&m, &model);
        assert!(m.contains_key("zzz") && !m.contains_key("zz"));
        assert_eq!(m["zzz"], 1);
        let rebuilt: ResourceMap<u32> = model.clone().into_iter().collect();
        check(&rebuilt, &model);
    }

    #[test]
    fn clones_share_what_did_not_change() {
        let m: ResourceMap<u32> = shuffled(1024)
            .into_iter()
            .map(|i| (format!("k{i:05}"), i))
            .collect();
        let mut next = m.clone();
        assert!(next.ptr_eq(&m));
        next.insert("k00500".into(), 0);
        assert!(!next.ptr_eq(&m));
        // One chunk was copied; every other one is shared.
        let shared = m
            .chunks
            .iter()
            .zip(&next.chunks)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, m.chunks.len() - 1);
        // The original is unchanged.
        assert_eq!(m.get("k00500"), Some(&500));
        assert_eq!(next.get("k00500"), Some(&0));
    }
}
