//! What a capture or playout thread does when its device stops: open it again, or, when the
//! device the user chose is gone (a headset unplugged), move to the system default, and tell
//! the call once per change rather than once per attempt.

use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::devices::{AudioSink, AudioSource, DeviceError, VideoSource};

/// What a media thread tells its call about its device (the call turns it into an event).
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceNotice {
    /// The device stopped delivering; confab keeps trying to open it again.
    Stopped { kind: &'static str, reason: String },
    /// It works again.
    Back { kind: &'static str },
    /// The chosen device is gone; the system default, `to`, is used instead.
    Moved { kind: &'static str, to: String },
}

pub type DeviceNotices = Arc<dyn Fn(DeviceNotice) + Send + Sync>;

/// Opens a device again: the chosen one (`false`) or the system default (`true`).
pub type OpenDevice<D> = Box<dyn FnMut(bool) -> Result<D, DeviceError> + Send>;

/// A device's name, for the notice that says where sound moved to.
pub trait Named {
    fn device_name(&self) -> String;
}

impl Named for Box<dyn AudioSource> {
    fn device_name(&self) -> String {
        self.name()
    }
}

impl Named for Box<dyn VideoSource> {
    fn device_name(&self) -> String {
        self.name()
    }
}

impl Named for Box<dyn AudioSink> {
    fn device_name(&self) -> String {
        self.name()
    }
}

/// The state of one device's recovery. Its owner reports each failure ([`Recovery::failed`])
/// and that sound flows ([`Recovery::delivering`]), and asks for the device again
/// ([`Recovery::attempt`]) until it has one.
pub struct Recovery<D> {
    kind: &'static str,
    open: OpenDevice<D>,
    /// The user chose a device by name (not "the default"): if it disappears, move.
    named: bool,
    /// Moved to the default already; stay there (the chosen one may come back as another
    /// device, and sound jumping back mid-sentence surprises more than it helps).
    on_default: bool,
    /// The call was told the device stopped, and not yet that it works again.
    told: bool,
    /// Why the device failed last, until it delivers again.
    failure: Option<DeviceError>,
    notices: DeviceNotices,
}

impl<D: Named> Recovery<D> {
    pub fn new(kind: &'static str, named: bool, open: OpenDevice<D>, notices: DeviceNotices) -> Self {
        Recovery { kind, open, named, on_default: !named, told: false, failure: None, notices }
    }

    fn tell_stopped(&mut self, why: &DeviceError) {
        if !std::mem::replace(&mut self.told, true) {
            warn!(kind = self.kind, error = %why, "device stopped; opening it again until it is back");
            (self.notices)(DeviceNotice::Stopped { kind: self.kind, reason: why.to_string() });
        }
    }

    /// The device failed. Silence from it is worth a word at once; a device that went away
    /// is first looked for (it may be gone for good, and sound move to the default). So is
    /// a device the user chose that falls silent: unplugged headphones starve their stream
    /// before the sound server stops listing them, and the next attempt says which it was,
    /// moved or stopped (saying "stopped" first raced the move, and lost the word "moved").
    pub fn failed(&mut self, why: DeviceError) {
        let may_be_gone = matches!(why, DeviceError::Unavailable { .. }) || (self.named && !self.on_default);
        if !may_be_gone {
            self.tell_stopped(&why);
        }
        self.failure = Some(why);
    }

    /// The device failed in a way that opening it again usually mends (a camera's stream
    /// broke): the call hears of it only if the next attempt fails too.
    pub fn interrupted(&mut self, why: DeviceError) {
        self.failure = Some(why);
    }

    /// Sound flows again.
    pub fn delivering(&mut self) {
        self.failure = None;
        if std::mem::take(&mut self.told) {
            info!(kind = self.kind, "device back");
            (self.notices)(DeviceNotice::Back { kind: self.kind });
        }
    }

    /// One attempt to open the device again (or the default, once the chosen one is gone).
    /// `None`: try again later.
    pub fn attempt(&mut self) -> Option<D> {
        let r = match (self.open)(self.on_default) {
            Err(DeviceError::NotFound { .. }) if self.named && !self.on_default => {
                self.on_default = true;
                (self.open)(true).inspect(|d| {
                    let to = d.device_name();
                    info!(kind = self.kind, %to, "the chosen device is gone; using the default");
                    (self.notices)(DeviceNotice::Moved { kind: self.kind, to });
                    // A move is news enough: no "back" follows it.
                    self.told = false;
                })
            }
            r => r,
        };
        r.map_err(|e| {
            debug!(kind = self.kind, error = %e, "device not back yet");
            let why = self.failure.take().unwrap_or(e);
            self.tell_stopped(&why);
            self.failure = Some(why);
        })
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Dev(&'static str);
    impl Named for Dev {
        fn device_name(&self) -> String {
            self.0.into()
        }
    }

    fn heard() -> (DeviceNotices, Arc<Mutex<Vec<DeviceNotice>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        (Arc::new(move |n| l.lock().unwrap().push(n)), log)
    }

    fn silent() -> DeviceError {
        DeviceError::Failed { kind: "microphone", name: "USB headset".into(), reason: "no audio for 2 s".into() }
    }

    fn went_away() -> DeviceError {
        DeviceError::Unavailable { kind: "microphone", name: "USB headset".into(), reason: "went away".into() }
    }

    #[test]
    fn a_device_that_went_away_and_opens_again_at_once_is_not_worth_a_word() {
        let (notices, log) = heard();
        let mut r = Recovery::new("microphone", true, Box::new(|_| Ok(Dev("USB headset"))), notices);
        r.failed(went_away());
        assert!(r.attempt().is_some());
        r.delivering();
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn silence_is_stopped_at_once_and_back_once_sound_flows_however_many_attempts() {
        let (notices, log) = heard();
        let tries = Arc::new(Mutex::new(0));
        let t = tries.clone();
        let open = Box::new(move |default: bool| {
            assert!(!default, "a busy device is not a gone one: no move");
            let mut n = t.lock().unwrap();
            *n += 1;
            if *n < 3 {
                Err(DeviceError::Busy { kind: "microphone", name: "USB headset".into(), reason: "busy".into() })
            } else {
                Ok(Dev("USB headset"))
            }
        });
        let mut r = Recovery::new("microphone", true, open, notices);
        r.failed(silent());
        let got: Vec<bool> = (0..3).map(|_| r.attempt().is_some()).collect();
        assert_eq!(got, [false, false, true]);
        // Opened, but still silent (a suspended device opens fine): no "back" yet.
        r.failed(silent());
        assert!(r.attempt().is_some());
        assert_eq!(log.lock().unwrap().len(), 1);
        r.delivering();
        r.delivering();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(matches!(&log[0], DeviceNotice::Stopped { reason, .. } if reason.contains("no audio")));
        assert_eq!(log[1], DeviceNotice::Back { kind: "microphone" });
    }

    #[test]
    fn chosen_headphones_that_fall_silent_because_they_were_pulled_out_are_only_moved() {
        let (notices, log) = heard();
        let open = Box::new(|default: bool| {
            if default {
                Ok(Dev("Desk-Speakers"))
            } else {
                Err(DeviceError::NotFound { kind: "speaker", id: "headphones".into() })
            }
        });
        let mut r = Recovery::new("speaker", true, open, notices);
        // The sound server starved the stream before it stopped listing the device.
        r.failed(silent());
        assert!(log.lock().unwrap().is_empty(), "not 'stopped' before we know");
        assert_eq!(r.attempt().unwrap().0, "Desk-Speakers");
        r.delivering();
        assert_eq!(*log.lock().unwrap(), [DeviceNotice::Moved { kind: "speaker", to: "Desk-Speakers".into() }]);
    }

    #[test]
    fn an_unplugged_device_moves_to_the_default_and_stays_there() {
        let (notices, log) = heard();
        let opened = Arc::new(Mutex::new(Vec::new()));
        let o = opened.clone();
        let open = Box::new(move |default: bool| {
            o.lock().unwrap().push(default);
            if default {
                Ok(Dev("Built-in Audio Analog Stereo"))
            } else {
                Err(DeviceError::NotFound { kind: "speaker", id: "usb".into() })
            }
        });
        let mut r = Recovery::new("speaker", true, open, notices);
        r.failed(went_away());
        assert_eq!(r.attempt().unwrap().0, "Built-in Audio Analog Stereo");
        r.delivering();
        r.failed(went_away());
        assert!(r.attempt().is_some());
        assert_eq!(*opened.lock().unwrap(), [false, true, true], "the chosen one once, then the default");
        assert_eq!(
            *log.lock().unwrap(),
            [DeviceNotice::Moved { kind: "speaker", to: "Built-in Audio Analog Stereo".into() }]
        );
    }

    #[test]
    fn the_default_device_gone_is_waited_for_not_moved_from() {
        let (notices, log) = heard();
        let open = Box::new(|default: bool| {
            assert!(default, "the user chose the default");
            Err::<Dev, _>(DeviceError::NotFound { kind: "microphone", id: String::new() })
        });
        let mut r = Recovery::new("microphone", false, open, notices);
        r.failed(went_away());
        assert!(r.attempt().is_none() && r.attempt().is_none());
        let log = log.lock().unwrap();
        assert!(matches!(&log[..], [DeviceNotice::Stopped { reason, .. }] if reason.contains("went away")), "{log:?}");
    }
}
