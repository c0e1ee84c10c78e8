//! Invite links in and out: the `confab:` scheme (tauri-plugin-deep-link) brings a clicked
//! link to the app, as the first argument of a new process; tauri-plugin-single-instance
//! hands a second process's arguments to the running app, which shows that room's join
//! screen instead of opening a second window. Copy invite link puts the current call's
//! link on the clipboard (tauri-plugin-clipboard-manager).

use std::sync::Mutex;

use serde::Serialize;
use tauri::ipc::Channel;
use tauri::{AppHandle, Manager, State};
use tauri_plugin_clipboard_manager::ClipboardExt;

use crate::invite::Invite;
use crate::AppState;

/// What the join screen is given: a room to fill in, or why a link could not be used.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LinkNews {
    Invite { invite: Invite },
    Bad { message: String },
}

impl LinkNews {
    pub fn from_arg(arg: &str) -> LinkNews {
        match Invite::parse(arg) {
            Ok(invite) => LinkNews::Invite { invite },
            Err(e) => LinkNews::Bad { message: format!("This link cannot be used: {e}.") },
        }
    }
}

/// Links wait here until the page listens (one clicked while the page is still loading),
/// then go straight to it.
#[derive(Default)]
pub struct LinkInbox {
    page: Mutex<Option<Channel<LinkNews>>>,
    waiting: Mutex<Vec<LinkNews>>,
}

impl LinkInbox {
    pub fn deliver(&self, news: LinkNews) {
        let page = self.page.lock().unwrap();
        match page.as_ref() {
            Some(ch) if ch.send(news.clone()).is_ok() => {}
            _ => self.waiting.lock().unwrap().push(news),
        }
    }
}

/// The page's channel for links; those that came before it are sent at once.
#[tauri::command]
pub fn watch_links(state: State<'_, AppState>, links: Channel<LinkNews>) {
    let mut page = state.links.page.lock().unwrap();
    for news in state.links.waiting.lock().unwrap().drain(..) {
        let _ = links.send(news);
    }
    *page = Some(links);
}

/// Arguments of a process started with a link (the desktop's `confab %u`): the link, if any.
pub fn link_in_args<I: IntoIterator<Item = S>, S: AsRef<str>>(args: I) -> Option<String> {
    args.into_iter().skip(1).map(|a| a.as_ref().to_string()).find(|a| Invite::looks_like_link(a))
}

/// A second `confab` was started (a link clicked while we run): its link goes to our join
/// screen, and our window comes to the front.
pub fn second_instance(app: &AppHandle, args: Vec<String>) {
    tracing::info!(args = args.len(), "another confab was started; it hands over to this one");
    if let Some(link) = link_in_args(&args) {
        app.state::<AppState>().links.deliver(LinkNews::from_arg(&link));
    }
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.unminimize();
        let _ = w.show();
        let _ = w.set_focus();
    }
}

/// Copy invite link: the current call's link (with the room password only if asked for) on
/// the clipboard; returned too, so that the page can show it.
#[tauri::command]
pub async fn copy_invite(app: AppHandle, state: State<'_, AppState>, with_password: bool) -> Result<String, String> {
    let link = {
        let call = state.call.lock().await;
        let active = call.as_ref().ok_or("Not in a call.")?;
        let mut invite = active.invite.clone();
        if !with_password {
            invite.password = None;
        }
        invite.link()
    };
    app.clipboard().write_text(link.clone()).map_err(|e| format!("Cannot copy to the clipboard: {e}"))?;
    Ok(link)
}

/// Whether the current call has a room password (the page offers to put it in the link).
#[tauri::command]
pub async fn invite_info(state: State<'_, AppState>) -> Result<(bool, bool), String> {
    let call = state.call.lock().await;
    let active = call.as_ref().ok_or("Not in a call.")?;
    let local_only = active.invite.server.contains("://127.0.0.1") || active.invite.server.contains("://localhost");
    Ok((active.invite.password.is_some(), local_only))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_is_found_among_the_arguments() {
        assert_eq!(link_in_args(["confab", "confab://join?room=a"]).as_deref(), Some("confab://join?room=a"));
        assert_eq!(link_in_args(["confab", "--name", "Ada", "confab://x"]).as_deref(), Some("confab://x"));
        assert_eq!(link_in_args(["confab", "--room", "a"]), None);
        // The program's own path never counts, whatever it is called.
        assert_eq!(link_in_args(["confab://odd-install-path"]), None);
    }

    #[test]
    fn a_bad_link_becomes_a_message_for_the_join_screen() {
        match LinkNews::from_arg("confab://join?room=a") {
            LinkNews::Bad { message } => assert!(message.contains("no server"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            LinkNews::from_arg("confab://join?room=a&server=ws%3A%2F%2Fh%3A1%2Fws"),
            LinkNews::Invite { .. }
        ));
    }
}
