mod common;
use common::*;
use gameserver::protocol::{pb, ServerMessage};

#[test]
fn two_players_on_different_shards_chat_over_tls() {
    let server = TestServer::start(true, |_| {});
    let mut a = server.enter_on_shard("alice", 0);
    let mut b = server.enter_on_shard("bob", 1);
    b.expect_spawn(a.id);
    a.expect_spawn(b.id);
    a.chat("hello bob");
    let (from, text) = b.expect("chat", |m| match m {
        ServerMessage::Chat(c) => Some((c.player_id, c.text.clone())),
        _ => None,
    });
    assert_eq!((from, text.as_str()), (a.id, "hello bob"));
    let _ = pb::Result::Ok;
}
