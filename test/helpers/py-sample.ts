// One nested value the Python-compatibility tests dump with several encoders (json.dumps, yaml.dump).
export const SAMPLE = {
  name: 'web',
  ports: [80, 443],
  env: { DEBUG: 'false', LEVEL: 3 },
  hosts: [
    { h: 'a', up: true },
    { h: 'b', up: null },
  ],
  empty: [],
  note: "it's",
};
