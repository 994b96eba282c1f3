import http from 'k6/http';
export const options = { vus: 2, duration: '10s' };
export default function () { http.get('http://api:8000/health'); }
