//! Splitting the list of players a newcomer must see into `S_SPAWN` frames under 65535 bytes.

use prost::Message;

use crate::protocol::{pb, HEADER_LEN, MAX_SERVER_FRAME};

/// The largest `S_SPAWN` body that still fits one frame.
pub const MAX_SPAWN_BODY: usize = MAX_SERVER_FRAME - HEADER_LEN;

/// Groups `players` into `S_SPAWN` messages whose frames each fit in 65535 bytes, keeping their
/// order. Returns no message for no players.
pub fn spawn_frames(players: impl IntoIterator<Item = pb::Player>) -> Vec<pb::SSpawn> {
    let mut frames = Vec::new();
    let mut current = pb::SSpawn::default();
    let mut current_len = 0;
    for player in players {
        let entry_len =
            1 + prost::length_delimiter_len(player.encoded_len()) + player.encoded_len();
        if current_len + entry_len > MAX_SPAWN_BODY && !current.players.is_empty() {
            frames.push(std::mem::take(&mut current));
            current_len = 0;
        }
        current_len += entry_len;
        current.players.push(player);
    }
    if !current.players.is_empty() {
        frames.push(current);
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn player(i: u64) -> pb::Player {
        pb::Player {
            player_id: i,
            name: format!("player_{i:0>26}"),
            x: 1.5,
            y: 2.5,
            z: i as f32,
        }
    }

    #[test]
    fn no_players_no_frames() {
        assert!(spawn_frames(std::iter::empty()).is_empty());
    }

    #[test]
    fn many_players_split_under_the_frame_limit_in_order() {
        let frames = spawn_frames((1..=5000).map(player));
        assert!(frames.len() > 1);
        let mut next = 1;
        for frame in &frames {
            assert!(HEADER_LEN + frame.encoded_len() <= MAX_SERVER_FRAME);
            for p in &frame.players {
                assert_eq!(p.player_id, next);
                next += 1;
            }
        }
        assert_eq!(next, 5001);
        // every frame but the last is close to full: no needless fragmentation
        for frame in &frames[..frames.len() - 1] {
            assert!(frame.encoded_len() > MAX_SPAWN_BODY - 100);
        }
    }
}
