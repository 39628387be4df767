// Amazon SageMaker tab, "from Laptop": the browser sends the picked files straight to S3 in parts.
//
// The WebUI server only starts, signs and completes multipart uploads (POST sagemaker/uploads/<step>);
// the bytes go from this page to S3 with presigned PUTs. Each file is read part by part, in order: the
// whole file's SHA-256 and each part's CRC32 are computed on the way, so only the parts in flight (plus
// one read ahead) are held in memory, whatever the size or number of files. Parts from every file share
// one pool of PUTs in flight (about 6, earlier files first); a failed PUT is retried after 0, 1, 3, 5 s,
// and re-signed when S3 answers 403 (an expired URL). A failure leaves the multipart upload open: picking
// the same file again resumes it (the server finds the open upload and the parts S3 holds; the page skips
// those whose size and CRC32 match).
//
// Tunable from the console (read when a batch starts): window.sagemakerUploadConcurrency (6),
// window.sagemakerUploadRetryDelays (ms, [0, 1000, 3000, 5000]), window.sagemakerUploadStallMs (120000).
(function () {
  'use strict';

  const ROUTE = 'sagemaker/uploads/'; // relative, so a WebUI served under --subpath still works

  function app() {
    return typeof gradioApp === 'function' ? gradioApp() : document;
  }

  function find(id) {
    return app().querySelector('#' + id) || document.getElementById(id);
  }

  function hashes() {
    if (!window.sagemakerHash) throw new Error('sagemaker_hash.js is not loaded: reload the page.');
    return window.sagemakerHash;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function mb(bytes) {
    return (bytes / 1e6).toFixed(1) + ' MB';
  }

  // -- the server's steps ------------------------------------------------------------------------------
  class StepError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status; // 0: the WebUI could not be reached
    }
  }

  async function post(step, body) {
    let resp;
    try {
      resp = await fetch(ROUTE + step, {
        method: 'POST', credentials: 'same-origin', cache: 'no-store',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body),
      });
    } catch (e) {
      throw new StepError('the WebUI cannot be reached (' + (e && e.message || e) + ')', 0);
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (!resp.ok) {
      const why = data && (data.error || data.detail) || ('HTTP ' + resp.status);
      throw new StepError(typeof why === 'string' ? why : JSON.stringify(why), resp.status);
    }
    return data;
  }

  // -- a number of slots shared by every file; a lower rank (earlier file) goes first ------------------
  class Pool {
    constructor(limit) {
      this.limit = Math.max(1, limit | 0);
      this.active = 0;
      this.waiting = [];
    }

    acquire(rank) {
      if (this.active < this.limit) {
        this.active++;
        return Promise.resolve();
      }
      return new Promise((resolve) => {
        this.waiting.push({rank: rank, resolve: resolve});
        this.waiting.sort((x, y) => x.rank - y.rank);
      });
    }

    release() {
      const next = this.waiting.shift();
      if (next) next.resolve(); // the slot passes on
      else this.active--;
    }
  }

  // -- one row per file under the picker -----------------------------------------------------------------
  class Row {
    constructor(list, file) {
      this.file = file;
      this.el = document.createElement('div');
      this.el.className = 'sagemaker-upload-row';
      this.el.style.cssText = 'margin:6px 0;font-size:0.9em;';
      const head = document.createElement('div');
      const name = document.createElement('b');
      name.textContent = file.name;
      this.state = document.createElement('span');
      this.state.className = 'sagemaker-upload-state';
      head.append(name, document.createTextNode(': '), this.state);
      const track = document.createElement('div');
      track.style.cssText = 'height:6px;border-radius:3px;background:rgba(128,128,128,0.25);overflow:hidden;';
      this.bar = document.createElement('div');
      this.bar.className = 'sagemaker-upload-bar';
      this.bar.style.cssText = 'height:100%;width:0;background:#ff9900;transition:width 0.2s;';
      track.appendChild(this.bar);
      this.el.append(head, track);
      list.appendChild(this.el);
      this.note = '';
      this.done = 0; // bytes confirmed in the cloud
      this.sending = new Map(); // part number -> bytes of it sent so far
      this.timer = 0;
      this.phase = 'starting';
    }

    set(text) {
      this.state.textContent = (this.note ? this.note + ' — ' : '') + text;
    }

    progress() {
      if (this.timer) return;
      this.timer = setTimeout(() => {
        this.timer = 0;
        if (this.phase !== 'uploading') return;
        let bytes = this.done;
        this.sending.forEach((n) => { bytes += n; });
        const size = this.file.size;
        const pct = size ? Math.min(100, Math.floor(100 * bytes / size)) : 100;
        this.bar.style.width = pct + '%';
        this.set('uploading ' + pct + '% (' + mb(bytes) + ' of ' + mb(size) + ')');
      }, 100);
    }

    finish(text, ok) {
      this.phase = 'over';
      if (ok) this.bar.style.width = '100%';
      this.bar.style.background = ok ? '#2e7d32' : '#c62828';
      this.set(text);
      this.el.dataset.state = ok ? 'ok' : 'failed';
    }
  }

  // -- one part: sign, PUT, retry -----------------------------------------------------------------------
  function put(signed, bytes, onProgress, stallMs) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      let stall = 0;
      const arm = () => {
        clearTimeout(stall);
        stall = setTimeout(() => xhr.abort(), stallMs);
      };
      xhr.open(signed.method || 'PUT', signed.url);
      Object.entries(signed.headers || {}).forEach(([k, v]) => xhr.setRequestHeader(k, v));
      xhr.upload.onprogress = (ev) => { arm(); onProgress(ev.loaded); };
      xhr.upload.onload = arm;
      xhr.onload = () => {
        clearTimeout(stall);
        resolve({status: xhr.status, etag: xhr.getResponseHeader('ETag'), body: xhr.responseText || ''});
      };
      xhr.onerror = () => { clearTimeout(stall); resolve({status: 0, error: 'the network failed'}); };
      xhr.onabort = () => { clearTimeout(stall); resolve({status: 0, error: 'no progress for ' + stallMs / 1000 + ' s'}); };
      arm();
      xhr.send(bytes);
    });
  }

  function s3Reason(r) {
    if (!r.status) return r.error;
    const code = /<Code>([^<]*)<\/Code>/.exec(r.body);
    const msg = /<Message>([^<]*)<\/Message>/.exec(r.body);
    return 'S3 answered ' + r.status + (code ? ' ' + code[1] : '') + (msg ? ': ' + msg[1] : '');
  }

  async function sendPart(job, number, bytes, checksum) {
    const {plan, row, settings} = job;
    const delays = settings.delays;
    let signed = null;
    let reason = '';
    for (let attempt = 0; ; attempt++) {
      if (job.failure) throw new Error(job.failure); // another part failed for good: stop here
      if (!signed) {
        try {
          signed = await post('sign', {key: plan.key, upload_id: plan.upload_id, part_number: number,
            checksum_crc32: checksum});
        } catch (e) {
          if (e.status && e.status < 500) throw new Error('part ' + number + ': ' + e.message);
          reason = e.message; // the WebUI is restarting or unreachable: worth another try
        }
      }
      if (signed) {
        const r = await put(signed, bytes, (n) => { row.sending.set(number, n); row.progress(); }, settings.stallMs);
        row.sending.delete(number);
        if (r.status >= 200 && r.status < 300) {
          if (!r.etag) {
            throw new Error('part ' + number + ': S3 did not expose the ETag header: the bucket\'s CORS must ' +
              'expose ETag (run Set up again).');
          }
          return r.etag;
        }
        reason = s3Reason(r);
        const retryable = r.status === 0 || r.status === 403 || r.status === 408 || r.status === 429 ||
          r.status >= 500;
        if (!retryable) throw new Error('part ' + number + ': ' + reason);
        if (r.status === 403) signed = null; // the link expired (or the clock is off): sign it again
      }
      row.progress();
      if (attempt >= delays.length) {
        throw new Error('part ' + number + ': ' + reason + ' (after ' + (attempt + 1) + ' attempts)');
      }
      await sleep(delays[attempt]);
    }
  }

  // -- one file -----------------------------------------------------------------------------------------
  async function readSlice(file, start, end) {
    try {
      return new Uint8Array(await file.slice(start, end).arrayBuffer());
    } catch (e) {
      throw new Error('cannot read the file (' + (e && e.message || e) + '): was it moved or changed?');
    }
  }

  // The file's first bytes, sent with the start so the server checks the type before any part goes (as
  // core/models/headers.py's head_length: a .safetensors header; a torch zip's data.pkl, written first).
  const HEAD_LIMIT = 16 * 1024 * 1024 + 64 * 1024;
  const PICKLE_END = [0x2e, 0x50, 0x4b, 0x07, 0x08]; // a pickle's STOP, then the zip's data descriptor

  function indexOf(bytes, pattern, from) {
    outer: for (let i = from; i <= bytes.length - pattern.length; i++) {
      for (let j = 0; j < pattern.length; j++) if (bytes[i + j] !== pattern[j]) continue outer;
      return i;
    }
    return -1;
  }

  function headLength(name, bytes, size) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let wanted = 1024 * 1024; // a plain pickle: its opening
    if (/\.safetensors$/i.test(name) && bytes.length >= 8) {
      wanted = 8 + Number(view.getBigUint64(0, true));
      if (wanted > HEAD_LIMIT + 8 || wanted > size) return bytes.length; // no header: the claim says enough
    } else if (bytes.length >= 30 && view.getUint32(0, true) === 0x04034b50) {
      const packed = view.getUint32(18, true);
      wanted = 30 + view.getUint16(26, true) + view.getUint16(28, true) + packed;
      if ((view.getUint16(6, true) & 8) && !packed) {
        const end = indexOf(bytes, PICKLE_END, 30);
        wanted = end >= 0 ? end + 1 : Math.max(65536, 4 * bytes.length);
      }
    }
    return Math.min(wanted, HEAD_LIMIT, size);
  }

  async function readHead(file) {
    let bytes = await readSlice(file, 0, Math.min(file.size, 65536));
    for (;;) {
      const wanted = headLength(file.name, bytes, file.size);
      if (wanted <= bytes.length) return bytes.subarray(0, wanted); // no more than the header
      const more = await readSlice(file, 0, wanted);
      if (more.length <= bytes.length) return more;
      bytes = more;
    }
  }

  function base64(bytes) {
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(text);
  }

  async function hashWhole(file, partSize, row, rank, pools) {
    const sha = new (hashes().Sha256)();
    for (let start = 0; start < file.size; start += partSize) {
      const end = Math.min(file.size, start + partSize);
      await pools.memory.acquire(rank);
      try {
        sha.update(await readSlice(file, start, end));
      } finally {
        pools.memory.release();
      }
      row.set('checking whether the cloud holds this very file… ' + Math.floor(100 * end / file.size) + '%');
    }
    return sha.hex();
  }

  async function uploadFile(file, typeLabel, row, rank, pools, settings) {
    row.set('starting…');
    const ask = {type: typeLabel, name: file.name, size: file.size, head: base64(await readHead(file)),
      force: !!settings.force};
    let plan = await post('start', ask);
    let knownSha = null;
    if (plan.check_sha256) { // the cloud has a model of this name and size: is it this very file?
      knownSha = await hashWhole(file, plan.part_size, row, rank, pools);
      plan = await post('start', Object.assign({sha256: knownSha}, ask));
    }
    if (plan.skipped) {
      row.finish('skipped (already in the cloud)', true);
      return 'skipped';
    }
    const job = {plan: plan, row: row, settings: settings, failure: null};
    const done = new Map((plan.parts_done || []).map((p) => [p.part_number, p]));
    if (plan.detected) row.note = plan.detected; // what the header said, e.g. "a LoRA for SDXL"
    if (plan.resumed) {
      row.note = (row.note ? row.note + ', ' : '') + 'resumed, ' + done.size + ' part' + (done.size === 1 ? '' : 's') +
        ' already in the cloud';
    }
    row.phase = 'uploading';
    row.progress();

    const H = hashes();
    const sha = new H.Sha256();
    const parts = new Array(plan.part_count);
    const inFlight = new Set();
    for (let number = 1; number <= plan.part_count && !job.failure; number++) {
      const start = (number - 1) * plan.part_size;
      const end = Math.min(file.size, start + plan.part_size);
      const held = done.get(number);
      // A part takes memory before it is read and gives it back once S3 has it (or it proved to be there):
      // the next part is read and hashed while the PUTs go, and no more than this is ever held.
      await pools.memory.acquire(rank);
      let holding = true;
      try {
        if (job.failure) break;
        const bytes = await readSlice(file, start, end);
        sha.update(bytes);
        const checksum = H.crc32Base64(bytes);
        if (held && (held.size == null || held.size === bytes.length) &&
            (!held.checksum_crc32 || held.checksum_crc32 === checksum)) {
          parts[number - 1] = {part_number: number, etag: held.etag, checksum_crc32: checksum};
          row.done += bytes.length;
          row.progress();
          continue;
        }
        await pools.wire.acquire(rank);
        holding = false; // the task below gives both back
        const task = sendPart(job, number, bytes, checksum).then((etag) => {
          parts[number - 1] = {part_number: number, etag: etag, checksum_crc32: checksum};
          row.done += bytes.length;
          row.progress();
        }, (e) => {
          if (!job.failure) job.failure = e.message;
        }).finally(() => {
          pools.wire.release();
          pools.memory.release();
          inFlight.delete(task);
        });
        inFlight.add(task);
      } catch (e) {
        if (!job.failure) job.failure = e.message;
      } finally {
        if (holding) pools.memory.release();
      }
    }
    await Promise.all(Array.from(inFlight));
    if (job.failure) {
      throw new Error(job.failure.replace(/[.?!]?$/, (end) => end || '.') + ' The upload stays open in the cloud: ' +
        'pick the same file and upload again to resume it.');
    }
    const digest = sha.hex();
    if (knownSha && knownSha !== digest) throw new Error('the file changed while it was being read: upload it again.');
    row.phase = 'assembling';
    row.set('assembling in the cloud…');
    await post('complete', {key: plan.key, upload_id: plan.upload_id, parts: parts, sha256: digest, size: file.size,
      kind: plan.kind, base: plan.base});
    row.finish('done (sha256 ' + digest + ')', true);
    return 'done';
  }

  // -- the button ---------------------------------------------------------------------------------------
  let running = false;

  function warnOnLeave(ev) {
    ev.preventDefault();
    ev.returnValue = '';
    return '';
  }

  async function uploadFromLaptop(typeLabel, force) {
    const input = find('sagemaker-laptop-files');
    const list = find('sagemaker-laptop-progress');
    if (!input || !list) return;
    const files = Array.from(input.files || []);
    const say = (text) => {
      const line = document.createElement('div');
      line.className = 'sagemaker-upload-note';
      line.textContent = text;
      list.appendChild(line);
    };
    if (running) {
      say('An upload is already running: wait for it to finish, then upload more files.');
      return;
    }
    list.textContent = '';
    if (!files.length) {
      say('Pick one or more model files first.');
      return;
    }
    const settings = {
      concurrency: Number(window.sagemakerUploadConcurrency) || 6,
      delays: Array.isArray(window.sagemakerUploadRetryDelays) ? window.sagemakerUploadRetryDelays : [0, 1000, 3000, 5000],
      stallMs: Number(window.sagemakerUploadStallMs) || 120000,
      force: !!force, // upload even if the header says another type
    };
    // PUTs in flight, and parts in memory: those plus one read ahead (shared by every file of the batch).
    const pools = {wire: new Pool(settings.concurrency), memory: new Pool(settings.concurrency + 1)};
    running = true;
    window.addEventListener('beforeunload', warnOnLeave);
    const started = performance.now();
    try {
      const outcomes = await Promise.all(files.map((file, i) => {
        const row = new Row(list, file);
        return uploadFile(file, typeLabel, row, i, pools, settings).catch((e) => {
          row.finish('failed: ' + (e && e.message || e), false);
          return 'failed';
        });
      }));
      window.sagemakerLastUpload = {seconds: (performance.now() - started) / 1000, outcomes: outcomes,
        bytes: files.reduce((n, f) => n + f.size, 0), concurrency: settings.concurrency};
    } finally {
      running = false;
      window.removeEventListener('beforeunload', warnOnLeave);
    }
  }

  window.sagemakerUploadFromLaptop = function (typeLabel, force) {
    uploadFromLaptop(typeLabel, force).catch((e) => console.error('Amazon SageMaker uploader:', e));
    return [typeLabel];
  };
})();
