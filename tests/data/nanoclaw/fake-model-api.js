// Minimal fake model API on 127.0.0.1 for recording CLI output samples offline.
// Answers every model call with the text in REPLY (default "pong").
const http = require('http');
const reply = process.env.REPLY || 'pong';
const port = Number(process.env.MOCK_PORT || 8765);
let n = 0;
function sse(res, events) {
  res.writeHead(200, {'content-type': 'text/event-stream', 'cache-control': 'no-cache'});
  for (const [name, data] of events) {
    res.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
  }
  res.end();
}
function anthropic(body, res) {
  const id = `msg_mock${++n}`;
  const usage = {input_tokens: 10, output_tokens: 2, cache_creation_input_tokens: 0, cache_read_input_tokens: 0};
  const message = {id, type: 'message', role: 'assistant', model: body.model, content: [], stop_reason: null, stop_sequence: null, usage};
  if (!body.stream) {
    message.content = [{type: 'text', text: reply}];
    message.stop_reason = 'end_turn';
    res.writeHead(200, {'content-type': 'application/json'});
    return res.end(JSON.stringify(message));
  }
  sse(res, [
    ['message_start', {type: 'message_start', message}],
    ['content_block_start', {type: 'content_block_start', index: 0, content_block: {type: 'text', text: ''}}],
    ['content_block_delta', {type: 'content_block_delta', index: 0, delta: {type: 'text_delta', text: reply}}],
    ['content_block_stop', {type: 'content_block_stop', index: 0}],
    ['message_delta', {type: 'message_delta', delta: {stop_reason: 'end_turn', stop_sequence: null}, usage: {output_tokens: 2}}],
    ['message_stop', {type: 'message_stop'}],
  ]);
}
function responses(body, res) {
  const id = `resp_mock${++n}`;
  const item = {id: `msg_mock${n}`, type: 'message', role: 'assistant', status: 'completed',
    content: [{type: 'output_text', text: reply, annotations: []}]};
  const base = {id, object: 'response', created_at: Math.floor(Date.now() / 1000), model: body.model, status: 'in_progress', output: []};
  sse(res, [
    ['response.created', {type: 'response.created', response: base}],
    ['response.output_item.added', {type: 'response.output_item.added', output_index: 0, item: {...item, status: 'in_progress', content: []}}],
    ['response.output_text.delta', {type: 'response.output_text.delta', item_id: item.id, output_index: 0, content_index: 0, delta: reply}],
    ['response.output_item.done', {type: 'response.output_item.done', output_index: 0, item}],
    ['response.completed', {type: 'response.completed', response: {...base, status: 'completed', output: [item],
      usage: {input_tokens: 10, input_tokens_details: {cached_tokens: 0}, output_tokens: 2, output_tokens_details: {reasoning_tokens: 0}, total_tokens: 12}}}],
  ]);
}
function chat(body, res) {
  const id = `chatcmpl-mock${++n}`;
  const chunk = (delta, finish) => ({id, object: 'chat.completion.chunk', created: 0, model: body.model, choices: [{index: 0, delta, finish_reason: finish}]});
  res.writeHead(200, {'content-type': 'text/event-stream'});
  res.write(`data: ${JSON.stringify(chunk({role: 'assistant', content: reply}, null))}\n\n`);
  res.write(`data: ${JSON.stringify({...chunk({}, 'stop'), usage: {prompt_tokens: 10, completion_tokens: 2, total_tokens: 12}})}\n\n`);
  res.end('data: [DONE]\n\n');
}
http.createServer((req, res) => {
  let raw = '';
  req.on('data', (c) => { raw += c; });
  req.on('end', () => {
    console.error(`mock: ${req.method} ${req.url}`);
    if (process.env.MOCK_STATUS && req.method === 'POST') {
      res.writeHead(Number(process.env.MOCK_STATUS), {'content-type': 'application/json'});
      return res.end(req.url.includes('/messages')
        ? '{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}'
        : '{"error":{"message":"Incorrect API key provided: sk-dummy.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}');
    }
    let body = {};
    try { body = JSON.parse(raw || '{}'); } catch { /* not JSON */ }
    if (req.method === 'POST' && req.url.includes('/messages') && !req.url.includes('count_tokens')) return anthropic(body, res);
    if (req.method === 'POST' && req.url.includes('/responses')) return responses(body, res);
    if (req.method === 'POST' && req.url.includes('/chat/completions')) return chat(body, res);
    if (req.url.includes('/models')) { res.writeHead(200, {'content-type': 'application/json'}); return res.end('{"data":[],"models":[]}'); }
    res.writeHead(404, {'content-type': 'application/json'});
    res.end('{"error":{"message":"not found in mock"}}');
  });
}).listen(port, '127.0.0.1');
