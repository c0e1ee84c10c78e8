// The Tauri config lives at the repository root (tauri.conf.json), next to ui/ and icons/.
// The app manifest lists our commands so that capabilities can grant exactly them.
fn main() {
    let manifest = tauri_build::AppManifest::new().commands(&[
        "app_info",
        "list_devices",
        "save_settings",
        "start_preview",
        "stop_preview",
        "start_mic_test",
        "stop_mic_test",
        "join",
        "leave",
        "set_muted",
        "set_camera",
        "set_audio_processing",
        "switch_device",
        "send_chat",
        "frame_stream",
        "tile_counts",
        "set_tile_size",
        "watch_links",
        "copy_invite",
        "invite_info",
    ]);
    tauri_build::try_build(tauri_build::Attributes::new().config_path("../tauri.conf.json").app_manifest(manifest))
        .expect("tauri build step");
}
