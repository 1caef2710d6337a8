mod common;
use common::*;
use std::time::Duration;

#[test]
fn scratch() {
    let server = TestServer::start(true, |_| {});
    println!("start {:?}", server.connections());
    let id = server.register("alice", "password123");
    println!("after register {:?}", server.connections());
    std::thread::sleep(Duration::from_millis(200));
    println!("after register+200ms {:?}", server.connections());
    let l = server.login("alice", "password123");
    println!("after login {:?} {}", server.connections(), l.result);
    std::thread::sleep(Duration::from_millis(200));
    println!("after login+200ms {:?}", server.connections());
    for _ in 0..4 {
        let mut c = server.world_conn();
        ping(&mut c);
        println!("world conn {:?}", server.connections());
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        println!("after drop {:?}", server.connections());
    }
    let _ = id;
}
