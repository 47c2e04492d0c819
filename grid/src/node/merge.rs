//! The storage side of a merge on the absorbing shard's primary (architecture.md §10): the
//! frozen shard's data is copied through this shard's own log, as a `MergeBegin` entry, one
//! `Absorb` entry per part and a `MergeEnd` entry, so every replica applies the same entries and
//! a crash anywhere is recovered from the log. A new primary simply copies again: a part only
//! fills in what a replica lacks, and the frozen shard's data no longer changes.

use std::time::Duration;

use sutra_proto as pb;

use super::shard::{MergeStage, Shard, ShardError};
use crate::client::StorageClient;
use crate::limits;
use crate::replication::entry::Body;
use crate::store::{Checkpoint, KeyRange};

/// Absorbs shard `from` (owning `right`, frozen, its primary at `from_addr`) into `shard`
/// (primary of `epoch`): (the end entry's LSN, parts copied, bytes copied). Done already:
/// answers at once.
pub(crate) async fn absorb(
    shard: &Shard,
    epoch: u64,
    from: u32,
    right: KeyRange,
    from_addr: &str,
) -> Result<(u64, u64, u64), ShardError> {
    let me = shard.id.0;
    let busy = |reason: String| ShardError::Busy { shard: me, reason };
    let stage = shard.merge_stage(from, right)?;
    if stage == MergeStage::Done {
        return Ok((shard.read()?.applied_lsn(), 0, 0));
    }
    let deadline = Duration::from_millis(limits::REPL_RPC_DEADLINE_MS);
    let source = StorageClient::connect(from_addr)
        .await
        .map_err(|e| busy(format!("cannot reach shard {from}'s primary: {e}")))?
        .with_deadline(deadline);
    let mut begun = stage == MergeStage::Absorbing;
    let (mut key, mut parts, mut bytes) = (right.start, 0u64, 0u64);
    loop {
        let req = pb::MergePartRequest { shard: from, from_key: key, bytes_max: limits::MERGE_PART_BYTES_MAX as u64 };
        let part =
            source.merge_part(req).await.map_err(|e| busy(format!("shard {from}'s part at {key:#018x}: {e}")))?;
        if (part.key_start, part.key_end) != (right.start, right.end) {
            return Err(busy(format!(
                "shard {from} owns [{:#018x}, {:#018x}], not the [{:#018x}, {:#018x}] the merge names",
                part.key_start, part.key_end, right.start, right.end
            )));
        }
        // Checked before it is logged: a damaged part in the log would stop every replica.
        Checkpoint::open(crate::io::Mapped::from_vec(part.image.to_vec()))
            .map_err(|e| busy(format!("shard {from}'s part at {key:#018x} is damaged: {e}")))?;
        if !begun {
            let body = Body::MergeBegin { from, start: right.start, end: right.end, marks: &part.marks };
            shard.merge_step(epoch, body).await?;
            begun = true;
        }
        shard.merge_step(epoch, Body::Absorb { from, image: &part.image }).await?;
        parts += 1;
        bytes += part.image.len() as u64;
        if part.last {
            break;
        }
        if part.next_key <= key || part.next_key > right.end {
            return Err(busy(format!(
                "shard {from} answered a next part at {:#018x} after {key:#018x}",
                part.next_key
            )));
        }
        key = part.next_key;
    }
    let lsn = shard.merge_step(epoch, Body::MergeEnd { from }).await?;
    tracing::info!(shard = me, from, parts, bytes, lsn, "merge: copied the frozen shard through the log");
    Ok((lsn, parts, bytes))
}
