//! The storage side of a shard split (architecture.md §9): when a replica applies its shard's
//! split entry, it writes the new shard's first replica next to its own, from its own state,
//! so both halves start on the same nodes and nothing crosses the network. The node opens
//! that directory as a replica of the new shard (`StorageNode::adopt_split_shards`).

use std::io;

use super::{encode_meta, shard_dir, RETIRED};
use crate::io::{write_atomic, Disk};
use crate::store::{checkpoint, KeyRange};

/// Writes shard `child`'s replica (`image` as its `storage.dat`, then `shard.meta`, last, so
/// a directory without it is an unfinished split). Leaves alone a directory that already
/// holds a replica or is retired: a split entry applied again at recovery must not roll back
/// a replica that has taken writes since, nor revive one removed from this node.
pub(crate) fn write_child(disk: &dyn Disk, child: u32, range: KeyRange, image: &[u8]) -> io::Result<()> {
    let dir = shard_dir(child);
    if disk.exists(&format!("{dir}/shard.meta")) || disk.exists(&format!("{dir}/{RETIRED}")) {
        return Ok(());
    }
    disk.create_dir_all(&dir)?;
    checkpoint::write(disk, &dir, image).map_err(|e| io::Error::other(e.to_string()))?;
    write_atomic(disk, &dir, "shard.meta", &encode_meta(range))?;
    disk.sync_dir("shards")
}
