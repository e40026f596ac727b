//! A set of packet identifiers, as small as a session's field can be: the QoS 2
//! publishes a client has sent and not yet released. A sorted vector (24 bytes,
//! nothing allocated while empty) rather than a hash set (48): at most Receive
//! Maximum ids, usually none or a few.

/// Packet identifiers, sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PacketIds(Vec<u16>);

impl PacketIds {
    pub fn contains(&self, id: u16) -> bool {
        self.0.binary_search(&id).is_ok()
    }

    /// Adds `id`; false if it was there already.
    pub fn insert(&mut self, id: u16) -> bool {
        match self.0.binary_search(&id) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, id);
                true
            }
        }
    }

    /// Removes `id`; false if it was not there. The memory goes with the last one.
    pub fn remove(&mut self, id: u16) -> bool {
        let Ok(at) = self.0.binary_search(&id) else {
            return false;
        };
        self.0.remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        true
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_once_and_released_with_their_memory() {
        let mut ids = PacketIds::default();
        assert!(ids.insert(7));
        assert!(ids.insert(3));
        assert!(!ids.insert(7), "already there");
        assert!(ids.insert(65535));
        assert_eq!(ids.len(), 3);
        assert!(ids.contains(3) && ids.contains(7) && ids.contains(65535));
        assert!(!ids.contains(4));
        assert!(ids.remove(7));
        assert!(!ids.remove(7), "gone");
        assert!(ids.remove(3) && ids.remove(65535));
        assert!(ids.is_empty());
        assert_eq!(ids.0.capacity(), 0, "an empty set holds no memory");
    }
}
