//! The contract test: `docs/PROTOCOL.md` (a copy of the shared contract) against the compiled
//! `.proto` and the server's id table. Every message id, which service takes it, every field
//! number, name and type, and every enum value must match the page.

use std::collections::BTreeMap;

use bytes::Bytes;
use gameserver::protocol::{pb, Body, ClientMessage, MessageId, RawFrame, Service};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::FileDescriptorSet;

const PROTOCOL: &str = include_str!("../docs/PROTOCOL.md");
const PACKAGE: &str = "gameserver.v1";

#[derive(Debug)]
struct Field {
    number: i32,
    name: String,
    repeated: bool,
    ty: String,
}

#[derive(Debug)]
struct Row {
    id: u16,
    name: String,
    service: String,
    fields: Vec<Field>,
}

/// `1 `username` string, 2 `player` Player (comment)` → fields.
fn parse_fields(text: &str) -> Vec<Field> {
    let text = text.trim().trim_end_matches('.');
    if text.is_empty() {
        return Vec::new();
    }
    text.split(", ")
        .map(|part| {
            let part = part.split(" (").next().unwrap().trim();
            let mut words = part.split_whitespace();
            let number = words.next().unwrap().parse().unwrap();
            let name = words.next().unwrap().trim_matches('`').to_string();
            let mut ty = words.next().unwrap().to_string();
            let repeated = ty == "repeated";
            if repeated {
                ty = words.next().unwrap().to_string();
            }
            Field {
                number,
                name,
                repeated,
                ty,
            }
        })
        .collect()
}

fn message_rows() -> Vec<Row> {
    PROTOCOL
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            if cells.len() != 4 || !line.starts_with("| ") {
                return None;
            }
            let id = cells[0].trim_start_matches("| ").parse().ok()?;
            Some(Row {
                id,
                name: cells[1].trim_matches('`').to_string(),
                service: cells[2].to_string(),
                fields: parse_fields(cells[3].trim_end_matches(" |").trim_end_matches('|')),
            })
        })
        .collect()
}

/// The paragraph that starts with `` `Name`: `` (several lines, up to a blank line).
fn paragraph(name: &str) -> String {
    let start = PROTOCOL
        .find(&format!("`{name}`: "))
        .unwrap_or_else(|| panic!("PROTOCOL.md defines `{name}`"));
    let rest = &PROTOCOL[start + name.len() + 4..];
    let end = rest.find("\n\n").unwrap_or(rest.len());
    rest[..end].replace('\n', " ")
}

/// `` `OK = 0`, `INVALID_CREDENTIALS = 1` `` → {0: "OK", ...}
fn enum_values(name: &str) -> BTreeMap<i32, String> {
    paragraph(name)
        .split('`')
        .filter(|s| s.contains(" = "))
        .map(|s| {
            let (k, v) = s.split_once(" = ").unwrap();
            (v.trim().parse().unwrap(), k.trim().to_string())
        })
        .collect()
}

fn descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(gameserver::protocol::FILE_DESCRIPTOR_SET).unwrap()
}

/// `C_REGISTER` → `CRegister`, as the protobuf style guide writes it.
fn camel(name: &str) -> String {
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            let first = c.next().unwrap().to_ascii_uppercase();
            first.to_string() + &c.as_str().to_ascii_lowercase()
        })
        .collect()
}

fn expected_type(ty: &str) -> (Type, Option<String>) {
    match ty {
        "string" => (Type::String, None),
        "bytes" => (Type::Bytes, None),
        "uint64" => (Type::Uint64, None),
        "uint32" => (Type::Uint32, None),
        "float" => (Type::Float, None),
        "Result" | "DisconnectReason" => (Type::Enum, Some(format!(".{PACKAGE}.{ty}"))),
        "Player" => (Type::Message, Some(format!(".{PACKAGE}.{ty}"))),
        other => panic!("PROTOCOL.md uses a type this test does not know: {other}"),
    }
}

fn check_fields(message: &str, fields: &[Field]) {
    let set = descriptors();
    let file = set
        .file
        .iter()
        .find(|f| f.package() == PACKAGE)
        .expect("the proto file declares package gameserver.v1");
    let desc = file
        .message_type
        .iter()
        .find(|m| m.name() == message)
        .unwrap_or_else(|| panic!("the .proto has no message {message}"));
    assert_eq!(
        desc.field.len(),
        fields.len(),
        "{message}: field count differs from PROTOCOL.md"
    );
    for f in fields {
        let d = desc
            .field
            .iter()
            .find(|d| d.number() == f.number)
            .unwrap_or_else(|| panic!("{message}: no field number {}", f.number));
        assert_eq!(d.name(), f.name, "{message} field {}", f.number);
        let (ty, type_name) = expected_type(&f.ty);
        assert_eq!(d.r#type(), ty, "{message}.{} type", f.name);
        if let Some(type_name) = type_name {
            assert_eq!(d.type_name(), type_name, "{message}.{} type", f.name);
        }
        let label = if f.repeated {
            Label::Repeated
        } else {
            Label::Optional
        };
        assert_eq!(d.label(), label, "{message}.{} repeated or not", f.name);
        assert!(
            !d.proto3_optional(),
            "{message}.{} must be a plain proto3 field",
            f.name
        );
    }
}

/// The id each generated type carries in its frames.
fn body_ids() -> BTreeMap<&'static str, u16> {
    macro_rules! ids {
        ($($ty:ident),*) => { BTreeMap::from([$((stringify!($ty), <pb::$ty as Body>::ID as u16)),*]) };
    }
    ids!(
        CRegister,
        SRegister,
        CLogin,
        SLogin,
        CEnter,
        SEnter,
        SSpawn,
        SDespawn,
        CChat,
        SChat,
        CMove,
        SMove,
        CPing,
        SPong,
        CEcho,
        SEcho,
        SError,
        SDisconnect
    )
}

#[test]
fn the_page_has_every_message_of_the_table() {
    let rows = message_rows();
    assert_eq!(rows.len(), 18, "rows parsed from PROTOCOL.md: {rows:?}");
    assert_eq!(rows.len(), MessageId::ALL.len());
}

#[test]
fn every_message_id_and_field_matches_the_page() {
    let ids = body_ids();
    for row in message_rows() {
        let name = camel(&row.name);
        assert_eq!(
            ids.get(name.as_str()).copied(),
            Some(row.id),
            "{} must travel with id {}",
            row.name,
            row.id
        );
        let id = MessageId::from_u16(row.id).expect("the id table knows it");
        assert_eq!(
            id.is_client_to_server(),
            row.name.starts_with("C_"),
            "{} direction",
            row.name
        );
        check_fields(&name, &row.fields);
    }
    // The paragraph goes on after the field list's full stop.
    let player: Vec<Field> = parse_fields(paragraph("Player").split(". ").next().unwrap());
    assert_eq!(player.len(), 5);
    check_fields("Player", &player);
}

#[test]
fn each_client_message_is_taken_by_the_services_the_page_names() {
    for row in message_rows().iter().filter(|r| r.name.starts_with("C_")) {
        let frame = RawFrame {
            id: row.id,
            body: Bytes::new(),
        };
        for (service, label) in [(Service::Login, "login"), (Service::World, "world")] {
            let takes = row.service == "both" || row.service == label;
            assert_eq!(
                ClientMessage::decode(&frame, service).is_ok(),
                takes,
                "{} on the {label} service",
                row.name
            );
        }
    }
}

#[test]
fn enum_values_match_the_page() {
    let set = descriptors();
    let file = set.file.iter().find(|f| f.package() == PACKAGE).unwrap();
    for (name, prefix) in [
        ("Result", "RESULT_"),
        ("DisconnectReason", "DISCONNECT_REASON_"),
    ] {
        let page = enum_values(name);
        assert!(page.len() >= 8, "{name} parsed from PROTOCOL.md: {page:?}");
        let desc = file.enum_type.iter().find(|e| e.name() == name).unwrap();
        let proto: BTreeMap<i32, String> = desc
            .value
            .iter()
            .map(|v| {
                let short = v.name().strip_prefix(prefix).unwrap_or(v.name());
                (v.number(), short.to_string())
            })
            .collect();
        assert_eq!(proto, page, "{name}");
    }
}

#[test]
fn docs_copy_is_the_shared_contract() {
    // CI clones the repository with the shared folder beside it; a template cloned elsewhere
    // keeps its own copy and this check has nothing to compare against.
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/PROTOCOL.md");
    match std::fs::read_to_string(&shared) {
        Ok(text) => assert_eq!(text, PROTOCOL, "docs/PROTOCOL.md differs from {shared:?}"),
        Err(_) => eprintln!("note: {} not found; nothing to compare", shared.display()),
    }
}
