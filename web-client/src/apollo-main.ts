import './style.css';
import { apolloApi } from './apollo-api';
import { start } from './app';

start(document.getElementById('app')!, {
  library: 'Apollo Client',
  otherPage: { href: './', label: 'urql version' },
  makeApi: apolloApi,
});
