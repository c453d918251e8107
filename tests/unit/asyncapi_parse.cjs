// Reads an AsyncAPI document with the official parser and prints its diagnostics as one JSON line.
// usage: node asyncapi_parse.cjs NODE_MODULES_PARENT FILE   (tests/unit/test_events.py runs it)
const parserPath = require.resolve('@asyncapi/parser', { paths: [process.argv[2]] });
const { Parser, fromFile } = require(parserPath);
const severities = ['error', 'warning', 'info', 'hint'];

(async () => {
  const { document, diagnostics } = await fromFile(new Parser(), process.argv[3]).parse();
  const counts = { error: 0, warning: 0, info: 0, hint: 0 };
  for (const d of diagnostics) counts[severities[d.severity]] += 1;
  const problems = diagnostics.filter((d) => d.severity <= 1)
    .map((d) => ({ code: d.code, message: d.message, path: d.path.join('.') }));
  console.log(JSON.stringify({ counts, version: document ? document.version() : null, problems }));
})();
