//! Who owns which signer: the live nodes (heartbeat rows newer than the lease TTL) on a
//! consistent-hashing ring (`hashring`, SipHash with fixed keys, so every node computes the
//! same ring from the same rows). Each node is [`RING_VNODES_PER_NODE`] points on the ring;
//! a signer belongs to the node at the first point after the signer's hash. A node joining
//! takes only the signers whose hash falls just before its points; a node leaving gives
//! only its own signers away.
//!
//! The ring says who *should* hold a signer. Who *does* is the signer's lease; requests go
//! to the lease holder ([`crate::service`]).

use std::collections::BTreeMap;

use alloy_primitives::Address;
use hashring::HashRing;

use crate::config::RING_VNODES_PER_NODE;

/// A live node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its configured id.
    pub node_id: String,
    /// Its process instance: the lease holder id it uses.
    pub instance: String,
    /// Where it serves gRPC.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct VirtualNode {
    node_id: String,
    replica: u32,
}

/// The ring over the live members.
#[derive(Debug, Default)]
pub struct Ring {
    ring: HashRing<VirtualNode>,
    members: BTreeMap<String, Member>,
}

impl Ring {
    /// The ring of `members` (one entry per node id; the last one wins).
    pub fn new(members: impl IntoIterator<Item = Member>) -> Self {
        let mut ring = HashRing::new();
        let mut by_id = BTreeMap::new();
        for member in members {
            by_id.insert(member.node_id.clone(), member);
        }
        for node_id in by_id.keys() {
            for replica in 0..RING_VNODES_PER_NODE {
                ring.add(VirtualNode {
                    node_id: node_id.clone(),
                    replica,
                });
            }
        }
        Self {
            ring,
            members: by_id,
        }
    }

    /// The node `signer` belongs to; `None` when no node is live.
    pub fn owner(&self, signer: Address) -> Option<&Member> {
        let point = self.ring.get(&format!("{signer:#x}"))?;
        self.members.get(&point.node_id)
    }

    /// The live member whose process holds leases as `instance`.
    pub fn by_instance(&self, instance: &str) -> Option<&Member> {
        self.members
            .values()
            .find(|member| member.instance == instance)
    }

    /// How many nodes are live.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when no node is live.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member {
            node_id: id.to_owned(),
            instance: format!("{id}/1"),
            address: format!("{id}:1"),
        }
    }

    fn signers(n: u64) -> Vec<Address> {
        (0..n)
            .map(|i| Address::from_word(alloy_primitives::keccak256(i.to_be_bytes())))
            .collect()
    }

    fn owners(ring: &Ring, signers: &[Address]) -> Vec<String> {
        signers
            .iter()
            .map(|signer| ring.owner(*signer).expect("a live node").node_id.clone())
            .collect()
    }

    #[test]
    fn empty_ring_has_no_owner() {
        assert!(Ring::new([]).owner(Address::ZERO).is_none());
    }

    #[test]
    fn same_members_same_owners_whatever_the_order() {
        let signers = signers(500);
        let one = Ring::new([member("a"), member("b"), member("c")]);
        let two = Ring::new([member("c"), member("a"), member("b")]);
        assert_eq!(owners(&one, &signers), owners(&two, &signers));
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_signers() {
        let signers = signers(2000);
        let before = owners(
            &Ring::new([member("a"), member("b"), member("c")]),
            &signers,
        );
        let after = owners(&Ring::new([member("a"), member("c")]), &signers);
        let mut moved = 0;
        for (old, new) in before.iter().zip(&after) {
            if old != "b" {
                assert_eq!(old, new, "a signer of {old} moved");
            } else {
                moved += 1;
            }
        }
        // Each of three nodes owns roughly a third.
        assert!((400..=930).contains(&moved), "b owned {moved} of 2000");
    }

    #[test]
    fn a_joining_node_takes_only_what_it_owns() {
        let signers = signers(2000);
        let before = owners(&Ring::new([member("a"), member("b")]), &signers);
        let after = owners(
            &Ring::new([member("a"), member("b"), member("d")]),
            &signers,
        );
        for (old, new) in before.iter().zip(&after) {
            assert!(new == old || new == "d", "{old} -> {new}");
        }
        assert!(after.iter().any(|owner| owner == "d"));
    }

    #[test]
    fn instances_map_to_members() {
        let ring = Ring::new([member("a"), member("b")]);
        assert_eq!(
            ring.by_instance("b/1").map(|m| m.address.as_str()),
            Some("b:1")
        );
        assert!(ring.by_instance("b/2").is_none());
        assert_eq!(ring.len(), 2);
    }
}
