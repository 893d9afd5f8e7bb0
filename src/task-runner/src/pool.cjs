'use strict';
// The warm pool's bootstrap: the main module of a `node` the task runner
// starts before any request, in the box of the slot that will run it. It
// waits for its one task on a control pipe (descriptor argv[2]), closes it,
// and runs the task exactly as `node <entry> <args...>` would: same argv,
// cwd, require.main, CommonJS or ES module entry, nothing of this file left
// in require.cache, and no frame of it on the task's stack (the entry runs
// from the tick queue, straight into Node's own runMain).
const fs = require('node:fs');
const fd = Number(process.argv[2]);
const handOver = clocksFromHandOver();
// The read end is a blocking pipe (only the runner's write end is
// non-blocking), and libuv retries EINTR: a plain read to end of file.
const chunks = [];
const buf = Buffer.allocUnsafe(64 * 1024);
for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) {
  chunks.push(Buffer.from(buf.subarray(0, n)));
}
fs.closeSync(fd);
handOver();
const task = JSON.parse(Buffer.concat(chunks).toString('utf8'));
process.chdir(task.cwd);
process.argv.splice(1, process.argv.length - 1, task.entry, ...task.args);
delete require.cache[__filename];
// runMain sets it again for a CommonJS entry; an ES module entry has none.
delete process.mainModule;
process.nextTick(require('node:module').runMain, task.entry);

// This process started when its slot's previous run ended, so a clock that
// counts from the process's start would tell its task when that was. The
// time it waits for its task (`ms`, from `from` on Node's performance
// timeline) is taken out of every clock Node shows a task as time since
// start: process.uptime(), performance.now() and the performance timeline
// (entries, nodeTiming; timeOrigin moves forward as much). The run looks
// like a cold start whose start-up took as long as this one's did. Node
// keeps its own timeline inside, so times are translated where a task reads
// them and where it passes them in. All of it is set up before the wait;
// the returned function, called at hand-over, only sets `ms`. What stays
// (the kernel's start time, libuv's timer base): docs/isolation.md.
function clocksFromHandOver() {
  const perfHooks = require('node:perf_hooks');
  const { performance, PerformanceEntry, PerformanceMark } = perfHooks;
  const proto = Object.getPrototypeOf(performance);
  const { value: now } = Object.getOwnPropertyDescriptor(proto, 'now');
  let [from, ms] = [0, 0];
  const { uptime } = process;
  process.uptime = { uptime() { return uptime() - ms / 1e3; } }.uptime;
  // Node's time to the task's (nothing happens inside the wait), and back.
  // Every time a task can hand Node goes through `inward`: one that does
  // not would be read back through `out` less the wait, telling it.
  const out = (t) => t - Math.min(ms, Math.max(0, t - from));
  const inward = (t) => (typeof t === 'number' && t > from ? t + ms : t);
  // Options reach Node as a plain copy with the task's times moved onto
  // Node's timeline: each property read once, in Node's order, and `detail`
  // read from the task's own object, whose getters never see a moved time.
  const markOptions = (o) =>
    o === null || typeof o !== 'object' || Array.isArray(o)
      ? o
      : { startTime: inward(o.startTime), get detail() { return o.detail; } };
  const measureOptions = (o) => {
    if (o === null || typeof o !== 'object') return o;
    const { start, end, duration } = o;
    const withDetail = (copy) => Object.defineProperty(copy, 'detail', { get: () => o.detail });
    // One end and a duration: Node would put the other end `duration` away
    // on its own timeline, across the wait when the span reaches back before
    // it; both ends go in the task's time instead (where Node would accept them).
    if (duration !== undefined && (start === undefined) !== (end === undefined)) {
      const d = taskTime(duration);
      const known = taskTime(start === undefined ? end : start);
      const [s, e] = start === undefined ? [known - d, known] : [known, known + d];
      if (d >= 0 && s >= 0 && e >= 0) return withDetail({ start: inward(s), end: inward(e) });
    }
    return withDetail({ start: inward(start), end: inward(end), duration: durationOf(duration) });
  };
  // Node also takes a mark's name where it takes a time (as a duration too),
  // as that mark's time on its timeline. `marks` is the task's view of every
  // mark's time by name, as Node keeps it.
  const marks = new Map();
  const startUp = ['nodeStart', 'v8Start', 'environment', 'loopStart', 'loopExit', 'bootstrapComplete'];
  const taskTime = (t) => {
    if (typeof t === 'number') return t;
    const name = `${t}`;
    return startUp.includes(name) ? out(nodeTiming[name]) : marks.get(name);
  };
  const durationOf = (d) => {
    if (d === undefined || typeof d === 'number') return d;
    const t = taskTime(d);
    return t === undefined ? `${d}` : t;
  };
  const replace = (object, key, make) => {
    const old = Object.getOwnPropertyDescriptor(object, key);
    Object.defineProperty(object, key, { ...old, ...make(old) });
  };
  const getter = (object) => Object.values(Object.getOwnPropertyDescriptors(object))[0].get;
  const { nodeTiming } = performance;
  const entryName = Object.getOwnPropertyDescriptor(PerformanceEntry.prototype, 'name').get;
  replace(proto, 'now', () => ({ value: { now() { return now.call(this) - ms; } }.now }));
  replace(proto, 'timeOrigin', ({ get }) => ({
    get: getter({ get timeOrigin() { return get.call(this) + ms; } }),
  }));
  const entry = PerformanceEntry.prototype;
  const start = Object.getOwnPropertyDescriptor(entry, 'startTime').get;
  replace(entry, 'startTime', () => ({
    get: getter({ get startTime() { return out(start.call(this)); } }),
  }));
  replace(entry, 'duration', ({ get }) => ({
    get: getter({
      get duration() {
        const t = start.call(this);
        return out(t + get.call(this)) - out(t);
      },
    }),
  }));
  replace(proto, 'nodeTiming', ({ value: node }) => {
    const own = Object.getOwnPropertyDescriptors(node);
    const shifted = (key) => ({ ...own[key], get: () => (node[key] < 0 ? -1 : out(node[key])) });
    return {
      value: Object.create(Object.getPrototypeOf(node), {
        ...own,
        duration: { ...own.duration, get: () => now.call(performance) - ms },
        loopStart: shifted('loopStart'),
        loopExit: shifted('loopExit'),
      }),
    };
  });
  const made = (entry) => {
    marks.set(entryName.call(entry), out(start.call(entry)));
    return entry;
  };
  // Arguments pass on as given, as many as given (Node counts them), and
  // each wrapper's length is Node's.
  replace(proto, 'mark', ({ value: mark }) => ({
    value: {
      mark(name) {
        const args = [...arguments];
        if (args.length > 1) args[1] = markOptions(args[1]);
        return made(mark.apply(this, args));
      },
    }.mark,
  }));
  replace(proto, 'measure', ({ value: measure }) => ({
    value: {
      measure(name) {
        const args = [...arguments];
        if (args.length > 1) args[1] = measureOptions(args[1]);
        if (args.length > 2) args[2] = inward(args[2]);
        return measure.apply(this, args);
      },
    }.measure,
  }));
  replace(proto, 'clearMarks', ({ value: clearMarks }) => ({
    value: {
      clearMarks(...args) {
        const named = args[0] === undefined ? undefined : `${args[0]}`;
        clearMarks.call(this, named);
        if (named === undefined) marks.clear();
        else marks.delete(named);
      },
    }.clearMarks,
  }));
  const Mark = new Proxy(PerformanceMark, {
    construct(target, args, newTarget) {
      if (args.length > 1) args[1] = markOptions(args[1]);
      return made(Reflect.construct(target, args, newTarget === Mark ? target : newTarget));
    },
  });
  perfHooks.PerformanceMark = Mark;
  globalThis.PerformanceMark = Mark;
  // A mark's `constructor` would otherwise hand out Node's own class.
  replace(PerformanceMark.prototype, 'constructor', () => ({ value: Mark }));
  // Node stamps an Event with its own timeline's time.
  replace(Event.prototype, 'timeStamp', ({ get }) => ({
    get: getter({ get timeStamp() { return out(get.call(this)); } }),
  }));
  from = now.call(performance);
  return () => {
    ms = now.call(performance) - from;
  };
}
