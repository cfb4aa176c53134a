// lipsync-rt browser client: getUserMedia -> RTCPeerConnection -> POST /offer -> remote video + stats.
// State for tests and curious users is kept in window.lipsync (state, session, stats, error).
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const lipsync = (window.lipsync = { state: 'idle', session: null, stats: null, error: null, config: null });
let pc = null;
let localStream = null;
let audioContext = null;
let statsTimer = null;
let lastVideo = null;

function setStatus(text, isError = false) {
  lipsync.state = isError ? 'error' : lipsync.state;
  $('status').textContent = text;
  $('status').className = isError ? 'error' : '';
}

function authHeaders() {
  const token = $('token').value.trim();
  return token ? { Authorization: 'Bearer ' + token } : {};
}

async function loadConfig() {
  const config = await (await fetch('/config')).json();
  lipsync.config = config;
  const avatar = $('avatar');
  for (const name of config.avatars) avatar.add(new Option(name, name));
  if (!config.modes.includes('avatar')) $('mode').querySelector('option[value=avatar]').disabled = true;
  $('token-label').hidden = !config.token_required;
  if (params.get('token')) $('token').value = params.get('token');
  if (params.get('mode')) $('mode').value = params.get('mode');
  if (params.get('session')) $('watch').value = params.get('session');
  if (params.get('avatar')) avatar.value = params.get('avatar');
  if (params.get('audio') === 'file') $('audio-source').value = 'file';
  updateForm();
}

function updateForm() {
  $('avatar-label').hidden = $('mode').value !== 'avatar';
  $('local').hidden = $('mode').value !== 'camera';  // the camera preview, only when there is a camera
  $('audio-file').hidden = $('audio-source').value !== 'file';
}

// Speech from a file (or any audio the page makes, e.g. TTS) is sent as the audio track, exactly
// like a microphone: the server never reads files named by the client.
async function fileAudioTrack() {
  const file = $('audio-file').files[0];
  if (!file) throw new Error('choose an audio file first');
  audioContext = new AudioContext();
  const buffer = await audioContext.decodeAudioData(await file.arrayBuffer());
  const source = audioContext.createBufferSource();
  source.buffer = buffer;
  source.loop = true;
  const destination = audioContext.createMediaStreamDestination();
  source.connect(destination);
  source.start();
  return destination.stream.getAudioTracks()[0];
}

async function start() {
  $('start').disabled = true;
  lipsync.error = null;
  lipsync.state = 'starting';
  setStatus('asking for media…');
  try {
    const watch = $('watch').value.trim();  // a push session's id: watch it, send nothing
    const mode = watch ? 'avatar' : $('mode').value;
    const useFile = !watch && $('audio-source').value === 'file';
    // Echo cancellation, noise suppression and auto gain distort the speech that drives the lips.
    const constraints = {
      audio: useFile ? false : { echoCancellation: false, noiseSuppression: false, autoGainControl: false,
                                 channelCount: 1 },
      video: mode === 'camera' ? { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 25 } } : false,
    };
    if (watch) constraints.audio = false;
    localStream = constraints.audio || constraints.video
      ? await navigator.mediaDevices.getUserMedia(constraints) : new MediaStream();
    if (useFile) localStream.addTrack(await fileAudioTrack());
    if (mode === 'camera') $('local').srcObject = localStream;

    pc = new RTCPeerConnection({ iceServers: lipsync.config.ice_servers });
    for (const track of localStream.getTracks()) pc.addTrack(track, localStream);
    if (watch) pc.addTransceiver('audio', { direction: 'recvonly' });
    if (mode === 'avatar') pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addEventListener('track', (event) => {
      if ('jitterBufferTarget' in event.receiver) event.receiver.jitterBufferTarget = 0;
      // aiortc puts both tracks in one stream, so the browser plays them in sync.
      if ($('remote').srcObject !== event.streams[0]) $('remote').srcObject = event.streams[0];
    });
    pc.addEventListener('connectionstatechange', () => {
      lipsync.connectionState = pc.connectionState;
      setStatus('connection: ' + pc.connectionState, pc.connectionState === 'failed');
      if (pc.connectionState === 'connected') lipsync.state = 'connected';
    });

    setStatus('gathering candidates…');
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {  // the server takes one complete offer: no trickle ICE
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
    });
    setStatus('connecting…');
    const response = await fetch('/offer', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...authHeaders() },
      body: JSON.stringify(watch ? { sdp: pc.localDescription.sdp, type: 'offer', session: watch }
        : { sdp: pc.localDescription.sdp, type: 'offer', mode, avatar: $('avatar').value }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    lipsync.session = answer.viewer || answer.session;  // Stop ends a viewer, never the watched session
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    $('stop').disabled = false;
    statsTimer = setInterval(collectStats, 1000);
  } catch (error) {
    lipsync.error = String(error.message || error);
    setStatus('error: ' + lipsync.error, true);
    await stop();
  }
}

async function collectStats() {
  if (!pc) return;
  const report = await pc.getStats();
  const now = performance.now();
  const out = { time: now, video: {}, audio: {}, rtt_ms: null };
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && (s.kind === 'video' || s.kind === 'audio')) {
      const jb = s.jitterBufferEmittedCount ? (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount : null;
      Object.assign(out[s.kind], { jitter_buffer_ms: jb, packets_lost: s.packetsLost, bytes: s.bytesReceived });
      if (s.kind === 'video') {
        Object.assign(out.video, { frames_decoded: s.framesDecoded || 0, frames_dropped: s.framesDropped || 0,
                                   width: s.frameWidth, height: s.frameHeight, fps: s.framesPerSecond });
      } else {
        out.audio.samples_received = s.totalSamplesReceived || 0;
      }
    }
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && s.currentRoundTripTime !== undefined) {
      out.rtt_ms = 1000 * s.currentRoundTripTime;
    }
  });
  if (out.video.fps === undefined && lastVideo) {
    out.video.fps = (1000 * (out.video.frames_decoded - lastVideo.frames)) / (now - lastVideo.time);
  }
  lastVideo = { time: now, frames: out.video.frames_decoded || 0 };
  lipsync.stats = out;
  const f = (v, d = 0) => (v === null || v === undefined || Number.isNaN(v) ? '–' : v.toFixed(d));
  $('overlay').textContent =
    `fps ${f(out.video.fps, 1)}  rtt ${f(out.rtt_ms, 1)} ms\n` +
    `jitter buffer  video ${f(out.video.jitter_buffer_ms)} ms  audio ${f(out.audio.jitter_buffer_ms)} ms\n` +
    `frames ${out.video.frames_decoded || 0}  ${out.video.width || '?'}x${out.video.height || '?'}`;
}

async function stop() {
  clearInterval(statsTimer);
  statsTimer = null;
  const session = lipsync.session;
  lipsync.session = null;
  if (session) {
    fetch('/close', { method: 'POST', keepalive: true,
                      headers: { 'Content-Type': 'application/json', ...authHeaders() },
                      body: JSON.stringify({ session }) }).catch(() => {});
  }
  if (pc) pc.close();
  pc = null;
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  localStream = null;
  if (audioContext) audioContext.close();
  audioContext = null;
  $('remote').srcObject = null;
  $('start').disabled = false;
  $('stop').disabled = true;
  if (lipsync.state !== 'error') { lipsync.state = 'idle'; setStatus('idle'); }
}

$('mode').addEventListener('change', updateForm);
$('audio-source').addEventListener('change', updateForm);
$('start').addEventListener('click', start);
$('stop').addEventListener('click', stop);
window.addEventListener('pagehide', stop);
loadConfig().then(() => { if (params.get('autostart') === '1') start(); })
  .catch((error) => setStatus('error: cannot load /config: ' + error, true));
