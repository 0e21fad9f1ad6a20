import './style.css';
import { start } from './app';
import { urqlApi } from './urql-api';

start(document.getElementById('app')!, {
  library: 'urql',
  otherPage: { href: 'apollo.html', label: 'Apollo Client version' },
  makeApi: urqlApi,
});
