'use strict';
// Fetches the current temperature at a place from Open-Meteo's public API
// (no key needed) and prints one JSON line. The only host this task may
// reach is the one its package.json declares under "nautilus"."egress"; the
// TLS connection goes from this box to api.open-meteo.com, verified against
// Node's own root store.
//
//   args: [latitude] [longitude]   (default: Berlin, 52.52 13.41)

const [lat = '52.52', lon = '13.41'] = process.argv.slice(2);

function coordinate(text, max, name) {
  const n = Number(text);
  if (!/^-?\d{1,3}(\.\d{1,6})?$/.test(text) || Math.abs(n) > max) {
    console.error(`${name} must be a number from -${max} to ${max} with at most 6 decimals, got ${JSON.stringify(text)}`);
    process.exit(2);
  }
  return text;
}

async function main() {
  const latitude = coordinate(lat, 90, 'latitude');
  const longitude = coordinate(lon, 180, 'longitude');
  const url =
    'https://api.open-meteo.com/v1/forecast' +
    `?latitude=${latitude}&longitude=${longitude}&current=temperature_2m`;
  const res = await fetch(url, { signal: AbortSignal.timeout(15000) });
  if (!res.ok) throw new Error(`Open-Meteo answered HTTP ${res.status}`);
  const body = await res.json();
  const current = body && body.current;
  if (!current || typeof current.temperature_2m !== 'number') {
    throw new Error('Open-Meteo answered without current.temperature_2m');
  }
  console.log(JSON.stringify({ latitude, longitude, time: current.time, temperature_2m: current.temperature_2m }));
}

main().catch((e) => {
  // fetch wraps the network error; its code says which wall was hit.
  const code = e.cause && e.cause.code;
  console.error(`fetch-task: ${e.message}${code ? ` (${code})` : ''}`);
  process.exit(1);
});
